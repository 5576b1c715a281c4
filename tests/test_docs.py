"""Every "method.md <section>" citation in the repository names a section heading of docs/method.md."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
THIS = Path(__file__).resolve()
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}
SKIP_DIRS = {"runs", "mlruns", "mlartifacts", "node_modules", "__pycache__", "lafs.egg-info"}

NUMBER = r"\d+(?:\.\d+)*"
PAREN = r"(?:\s*\([^)\n]*\))?"
SEPARATOR = r"\s*(?:/|,|\band\b|&)\s*(?:(?:sections?|§|few-shot)\s*)?"
# "method.md 7.1/7.2", "method.md section 3", "method.md §8.4", "method.md 8 (fine-tuning) and 2.2/6", ...
CITATION = re.compile(
    rf"method\.md,?\s+(?:sections?\s+|§\s*)?(?P<refs>{NUMBER}{PAREN}(?:{SEPARATOR}{NUMBER}{PAREN})*)", re.IGNORECASE
)
INTERNAL = re.compile(rf"§\s*(?P<refs>{NUMBER}(?:{SEPARATOR}{NUMBER})*)")
HEADING = re.compile(rf"^#{{2,4}}\s+(?P<number>{NUMBER})\.?\s", re.MULTILINE)


def numbers(refs: str) -> list[str]:
    """Section numbers in a citation's reference list, parentheticals removed."""
    return re.findall(NUMBER, re.sub(r"\([^)]*\)", "", refs))


def repository_files() -> list[Path]:
    """Text files of the repository (hidden and generated folders left out), except docs/method.md and this file."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS]
        for name in files:
            path = Path(folder) / name
            if path.suffix in SUFFIXES and path not in (METHOD, THIS):
                found.append(path)
    return found


def sections() -> set[str]:
    return set(HEADING.findall(METHOD.read_text(encoding="utf-8")))


def test_every_code_citation_resolves() -> None:
    known = sections()
    cited: list[tuple[str, str]] = []
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = f"{path.relative_to(ROOT)}:{line}"
            cited += [(where, number) for number in numbers(match["refs"])]
    assert len(cited) >= 30, f"found only {len(cited)} citations: is the pattern still right?"
    missing = [f"{where} cites method.md {number}" for where, number in cited if number not in known]
    assert not missing, "citations without a section in docs/method.md:\n" + "\n".join(missing)


def test_internal_references_resolve() -> None:
    text = METHOD.read_text(encoding="utf-8")
    known = sections()
    missing = sorted({n for m in INTERNAL.finditer(text) for n in numbers(m["refs"]) if n not in known})
    assert not missing, f"docs/method.md refers to missing sections: {missing}"


def test_sections_are_unique_and_nested() -> None:
    found = HEADING.findall(METHOD.read_text(encoding="utf-8"))
    assert len(found) == len(set(found)), "duplicate section numbers"
    orphans = [n for n in found if "." in n and n.rsplit(".", 1)[0] not in found]
    assert not orphans, f"subsections without a parent section: {orphans}"
