"""run.json's JSON Schema, generated from `RunManifest` and the records it holds, and written to the docs:

python -m dery_deploy.pipeline.run_schema            # rewrite docs/run.schema.json
python -m dery_deploy.pipeline.run_schema --check    # exit 1 where the committed file is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dery_deploy.artifacts import atomic_write_text
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.schema import artifact_schema

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "run.schema.json"


def schema_text() -> str:
    """run.json's JSON Schema, generated from `RunManifest` and the records it holds."""
    return json.dumps(artifact_schema(RunManifest), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite docs/run.schema.json, or with --check exit 1 when the committed one differs from the code's."""
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        if SCHEMA_DOC.is_file() and SCHEMA_DOC.read_text() == schema_text():
            return 0
        print(f"{SCHEMA_DOC} differs from the code: run python -m dery_deploy.pipeline.run_schema", file=sys.stderr)
        return 1
    atomic_write_text(SCHEMA_DOC, schema_text())
    print(f"wrote {SCHEMA_DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
