"""The README's complete example is a DAG that Airflow parses, batched as docs/sizing.md recommends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def example_source() -> str:
    section = README.read_text().split("## A complete example", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README's complete example has no python block"
    return found.group(1)


def test_the_complete_example_parses_into_a_mapped_upscale_over_batches() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(example_source(), str(README), "exec"), namespace)

    upscale = namespace["upscaled"]
    assert upscale.dag.dag_id == "upscale_product_photos"
    assert set(upscale.dag.task_ids) == {"new_photos", "upscale", "publish"}
    assert upscale.partial_kwargs["deferrable"] is True
    batches = namespace["new_photos"].function()
    assert [len(batch) for batch in batches] == [100, 100, 50]
