"""A stored study as the API shows it: its summary, and with it the table."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.store import studies as store
from service.store.tables import Study
from service.studies.results import cells_of_row, counts, status_of, study_results
from service.studies.table import study_table
from service.study_schemas import Pruning, StudyPublic, StudySummary, StudyTable


def study_summary(session: Session, study: Study) -> StudySummary:
    """Status and counts, without reading any metrics."""
    jobs = store.study_jobs(session, study.id)
    return StudySummary(
        id=study.id, name=study.name, status=status_of(jobs), counts=counts(jobs),
        jobs=len(jobs), created_at=study.created_at,
    )  # fmt: skip


def table_of(session: Session, study: Study) -> StudyTable:
    """The study's table from its jobs' metrics as they stand."""
    _, results = study_results(session, study)
    return study_table(cells_of_row(study), results)


def study_public(session: Session, study: Study) -> StudyPublic:
    """The study with its table."""
    jobs, results = study_results(session, study)
    spec = study.spec
    pruning = spec.get("pruning")
    return StudyPublic(
        id=study.id, name=study.name, status=status_of(jobs), counts=counts(jobs),
        jobs=len(jobs), created_at=study.created_at, grid=spec["grid"], seeds=spec["seeds"],
        baseline=spec["baseline"], pruning=None if pruning is None else Pruning(**pruning),
        table=study_table(cells_of_row(study), results),
    )  # fmt: skip
