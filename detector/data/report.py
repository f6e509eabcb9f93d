"""The validation report: every issue found in a COCO dataset, and what was kept."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")


class Issue(BaseModel):
    """One defect; ``code`` is a short stable snake_case name, ``message`` has the numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Severity
    code: str
    message: str
    image_id: int | None = None
    annotation_id: int | None = None
    category_id: int | None = None
    file_name: str | None = None


class ValidationReport(BaseModel):
    """Every issue found, and what was kept.

    Each annotation in the file is either kept (``num_boxes`` positives + ``num_crowd``) or
    dropped (``num_boxes_dropped``, for any reason, including those of an unusable image).
    ``class_counts`` counts kept positive boxes per category name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    annotations_path: Path
    image_dir: Path
    strict: bool
    decode_images: bool = False
    issues: list[Issue] = []
    num_images: int = 0
    num_annotations: int = 0
    num_boxes: int = 0
    num_boxes_dropped: int = 0
    num_boxes_clipped: int = 0
    num_crowd: int = 0
    class_counts: dict[str, int] = {}
    num_negative_images: int = 0

    @property
    def ok(self) -> bool:
        """No errors (warnings and info are fine)."""
        return not any(i.severity == "error" for i in self.issues)

    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    def counts(self) -> dict[tuple[Severity, str], int]:
        """Issues per (severity, code), errors first, then by code."""
        counted = Counter((i.severity, i.code) for i in self.issues)
        return dict(sorted(counted.items(), key=lambda kv: (SEVERITIES.index(kv[0][0]), kv[0][1])))

    def to_table(self, max_items_per_code: int = 10) -> str:
        """Plain text: summary, counts per severity and code, then the first items of each code."""
        n = Counter(i.severity for i in self.issues)
        verdict = "OK" if self.ok else "FAILED"
        mode = ", strict" if self.strict else ""
        classes = ", ".join(f"{name} {count}" for name, count in self.class_counts.items())
        lines = [
            f"{self.annotations_path} (images in {self.image_dir}){mode}: {verdict}: "
            f"errors {n['error']}, warnings {n['warning']}, info {n['info']}",
            f"  images {self.num_images} ({self.num_negative_images} negative), "
            f"annotations {self.num_annotations}: boxes kept {self.num_boxes} "
            f"({self.num_boxes_clipped} clipped), crowd {self.num_crowd}, "
            f"dropped {self.num_boxes_dropped}",
            f"  classes: {classes or '-'}",
        ]
        counts = self.counts()
        if not counts:
            return "\n".join(lines)
        width = max(len(code) for _, code in counts)
        lines += ["", f"{'severity':<8}  {'code':<{width}}  {'count':>6}"]
        lines += [f"{sev:<8}  {code:<{width}}  {c:>6}" for (sev, code), c in counts.items()]
        for (sev, code), count in counts.items():
            items = [i for i in self.issues if i.severity == sev and i.code == code]
            lines += ["", f"{sev} {code} ({count}):"]
            lines += [f"  {where(i)}{i.message}" for i in items[:max_items_per_code]]
            if count > max_items_per_code:
                lines.append(f"  ... and {count - max_items_per_code} more (use --json)")
        return "\n".join(lines)


class DatasetError(ValueError):
    """A dataset whose validation report has errors; ``report`` holds all of them."""

    def __init__(self, report: ValidationReport, *, shown: int = 5) -> None:
        self.report = report
        errors = report.errors()
        codes = Counter(i.code for i in errors)
        lines = [f"  - {where(i)}{i.message}" for i in errors[:shown]]
        if len(errors) > shown:
            lines.append(f"  ... and {len(errors) - shown} more")
        summary = ", ".join(f"{code} x{c}" for code, c in codes.items())
        command = f"retinanet validate {report.annotations_path} {report.image_dir}"
        super().__init__(
            f"dataset {report.annotations_path} has {len(errors)} error(s) ({summary}):\n"
            + "\n".join(lines)
            + f"\nfull report: {command}{' --strict' if report.strict else ''}"
        )


def where(issue: Issue) -> str:
    """``image 3 (a.jpg) annotation 7: `` -- the ids an issue names, as a line prefix."""
    parts = []
    if issue.image_id is not None:
        name = f" ({issue.file_name})" if issue.file_name else ""
        parts.append(f"image {issue.image_id}{name}")
    if issue.annotation_id is not None:
        parts.append(f"annotation {issue.annotation_id}")
    if issue.category_id is not None and issue.image_id is None:
        parts.append(f"category {issue.category_id}")
    return " ".join(parts) + ": " if parts else ""
