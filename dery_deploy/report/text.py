"""Markdown pieces the report's sections share: a table, numbers that may be missing, and a selection's
evidence in words."""

from __future__ import annotations

from dery_deploy.train.select.evidence import Selection


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def fmt_pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def evidence(sel: Selection | None) -> str:
    """What a selection decided on, in words."""
    k, n = (sel.folds or 1, sel.images) if sel else (1, None)
    images = f", {n} images" if n else ""
    return f"out of fold by {k}-fold cross-validation{images}" if k > 1 else f"on the validation split{images}"
