"""What a job's datasets must agree on, checked on their rows when the job is created.

The training checks the same when it loads them (``detector``: the trainer compares the
validation categories with the training ones, the head the length of ``loss.alpha`` with the
class count); this is the one place the service checks it first, so a job that would fail
there is refused at creation (422) instead of failing in a worker minutes later.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.refusal import Refusal
from service.store.repo import get_dataset


class JobDatasetsError(Refusal):
    """The datasets of a job do not fit together or with its recipe."""


def check_job_datasets(
    session: Session,
    *,
    train_id: str,
    others: dict[str, str | None],
    alpha: object,
) -> None:
    """``others``: role ("val", "test") -> dataset id; ``alpha``: the recipe's ``loss.alpha``
    (a tuple: one value per class)."""
    train = get_dataset(session, train_id)
    for role, other_id in others.items():
        if other_id is not None and get_dataset(session, other_id).categories != train.categories:
            raise JobDatasetsError(
                "category_mismatch",
                f"the {role} dataset's categories differ from the training set's",
            )
    if isinstance(alpha, tuple) and len(alpha) != len(train.categories):
        raise JobDatasetsError(
            "invalid_recipe",
            f"loss.alpha has {len(alpha)} values but the dataset has "
            f"{len(train.categories)} classes",
        )
