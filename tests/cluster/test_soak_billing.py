"""The soak's billing: which extra submissions a FAILED job, a lost answer or a worker kill explains."""

from __future__ import annotations

from tests.cluster.soak import billing

KILL = 1000.0


def task(image: str, status: str, submitted_at: float) -> dict[str, object]:
    return {"image": image, "status": f"TASK_STATUS_{status}", "submitted_at": submitted_at}


def test_only_a_submission_nothing_explains_is_unexplained() -> None:
    tasks = [
        task("failed", "FAILED", 10.0),
        task("failed", "SUCCEED", 20.0),
        task("lost", "SUCCEED", 10.0),
        task("lost", "SUCCEED", 20.0),
        task("in-flight", "SUCCEED", KILL - 0.5),
        task("in-flight", "SUCCEED", KILL + 30),
        task("twice", "SUCCEED", KILL - 60),
        task("twice", "SUCCEED", KILL + 30),
        task("once", "SUCCEED", KILL - 0.5),
    ]
    stats = {
        "submissions_by_image": {"failed": 2, "lost": 2, "in-flight": 2, "twice": 2, "once": 1},
        "lost_answers_by_image": {"lost": 1},
    }

    bills = billing(["failed", "lost", "in-flight", "twice", "once"], stats, tasks, [KILL])

    assert bills["unexplained_extra"] == {"twice": 2}
    assert bills["resubmitted_after_failed_job"] == 1
    assert bills["resubmitted_after_worker_kill"] == 1
    assert bills["submissions"] == 9
