"""The repository's docs are self-contained: every cited doc exists in docs/, and every numbered citation resolves.

"method.md §8.4", "protocols.md 4.3 and 4.4", "protocols.md section 4", ... name section headings of docs/method.md,
docs/protocols.md, ...; a bare "environment.md" or "docs/results.md" names a file of docs/. The key/shape tables of
docs/official_state_dict.md are checked against the official listing kept as test data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
THIS = Path(__file__).resolve()
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}
SKIP_DIRS = {"runs", "mlruns", "mlartifacts", "node_modules", "__pycache__", "lafs.egg-info"}
# Docs whose sections are cited by number, and how many such citations the repository is known to hold at least.
NUMBERED = {"method.md": 30, "protocols.md": 10, "official_state_dict.md": 0}
CHECKPOINT_DOC = DOCS / "official_state_dict.md"
OFFICIAL_TABLE = ROOT / "tests" / "lafs_core" / "models" / "data" / "official_state_dict_base.tsv"

NUMBER = r"\d+(?:\.\d+)*"
PAREN = r"(?:\s*\([^)\n]*\))?"
SEPARATOR = r"\s*(?:/|,|-|–|\band\b|&)\s*(?:(?:sections?|§|few-shot)\s*)?"
REFS = rf"(?P<refs>{NUMBER}{PAREN}(?:{SEPARATOR}{NUMBER}{PAREN})*)"
# "method.md 7.1/7.2", "method.md section 3", "method.md §8.4", "protocols.md 1-2", "protocols.md 4.3 and 4.4", ...
ANY_CITATION = re.compile(rf"[\w-]+\.md,?\s+(?:sections?\s+|§\s*)?{REFS}", re.IGNORECASE)
INTERNAL = re.compile(rf"§\s*(?P<refs>{NUMBER}(?:{SEPARATOR}{NUMBER})*)")
HEADING = re.compile(rf"^#{{2,4}}\s+(?P<number>{NUMBER})\.?\s", re.MULTILINE)
# A doc named in the text: "environment.md", "docs/results.md", "docker/README.md", "[x](../docs/method.md)".
DOC_NAME = re.compile(r"(?<![\w.-])(?P<path>(?:[\w.-]+/)*[\w-]+\.md)\b")


def citation(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(name)},?\s+(?:sections?\s+|§\s*)?{REFS}", re.IGNORECASE)


def numbers(refs: str) -> list[str]:
    """Section numbers in a citation's reference list, parentheticals removed."""
    return re.findall(NUMBER, re.sub(r"\([^)]*\)", "", refs))


def repository_files() -> list[Path]:
    """Text files of the repository (hidden and generated folders left out), except this file."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS]
        for name in files:
            path = Path(folder) / name
            if path.suffix in SUFFIXES and path != THIS:
                found.append(path)
    return found


def sections(doc: str) -> list[str]:
    return HEADING.findall((DOCS / doc).read_text(encoding="utf-8"))


@pytest.mark.parametrize("doc", sorted(NUMBERED))
def test_every_citation_resolves(doc: str) -> None:
    known = set(sections(doc))
    pattern = citation(doc)
    cited: list[tuple[str, str]] = []
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = f"{path.relative_to(ROOT)}:{line}"
            cited += [(where, number) for number in numbers(match["refs"])]
    assert len(cited) >= NUMBERED[doc], f"found only {len(cited)} citations of {doc}: is the pattern still right?"
    missing = [f"{where} cites {doc} {number}" for where, number in cited if number not in known]
    assert not missing, f"citations without a section in docs/{doc}:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", sorted(NUMBERED))
def test_internal_references_resolve(doc: str) -> None:
    """A bare "§x" inside a doc names one of its own sections (citations of other docs are left out)."""
    text = ANY_CITATION.sub("", (DOCS / doc).read_text(encoding="utf-8"))
    known = set(sections(doc))
    missing = sorted({n for m in INTERNAL.finditer(text) for n in numbers(m["refs"]) if n not in known})
    assert not missing, f"docs/{doc} refers to missing sections: {missing}"


@pytest.mark.parametrize("doc", sorted(NUMBERED))
def test_sections_are_unique_and_nested(doc: str) -> None:
    found = sections(doc)
    assert found, f"docs/{doc} has no numbered sections"
    assert len(found) == len(set(found)), "duplicate section numbers"
    orphans = [n for n in found if "." in n and n.rsplit(".", 1)[0] not in found]
    assert not orphans, f"subsections without a parent section: {orphans}"


def resolves(name: str, citing: Path) -> bool:
    """Whether a doc name in ``citing`` names an existing file.

    A bare name is a doc of docs/ (or a top-level file such as README.md); a path is taken from the repository root
    or from the citing file's folder. Paths whose first folder is not part of the repository (``DIR/results.md``, an
    output placeholder; ``../shared/...``, outside the checkout) are not doc citations and are not checked.
    """
    if "/" not in name:
        return (DOCS / name).is_file() or (ROOT / name).is_file() or (citing.parent / name).is_file()
    if (ROOT / name).is_file() or (citing.parent / name).resolve().is_file():
        return True
    first = name.split("/", 1)[0]
    in_repo = (ROOT / first).is_dir() or (first == ".." and citing.parent != ROOT)
    return not in_repo


def test_every_cited_doc_exists() -> None:
    missing = []
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in DOC_NAME.finditer(text):
            if not resolves(match["path"], path):
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{path.relative_to(ROOT)}:{line} names {match['path']}")
    assert not missing, "docs that do not exist:\n" + "\n".join(missing)


def shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in re.findall(r"\d+", text))


def batch_norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")}
    return keys | {f"{prefix}.num_batches_tracked": ()}


def table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def documented_official_shapes() -> dict[str, tuple[int, ...]]:
    """The official keys and shapes that docs/official_state_dict.md describes, expanded like the TSV's rows."""
    rows = table_rows(CHECKPOINT_DOC.read_text(encoding="utf-8"))
    shapes: dict[str, tuple[int, ...]] = {}
    template: list[tuple[str, str]] = []
    blocks: list[dict[str, str]] = []
    for row in rows:
        key = row[0].strip("`")
        bn = re.fullmatch(r"BN\((\w+)\)", row[1]) if len(row) > 1 else None
        if re.fullmatch(r"[a-z][\w.{}]*", key) and re.fullmatch(r"`\([\d, ]*\)`", row[1]):
            shapes[key] = shape(row[1])
        elif re.fullmatch(r"[a-z][\w.{}]*", key) and bn and bn[1].isdigit():
            shapes |= batch_norm(key, int(bn[1]))
        elif re.fullmatch(r"\d[\w.]*", key) and (bn or re.fullmatch(r"`\([A-Z\d, ]*\)`", row[1])):
            template.append((key, row[1]))
        elif len(row) == 6 and row[0].isdigit():
            blocks.append(dict(zip("bKIEOS", row, strict=True)))
    for block in blocks:
        for key, spec in template:
            if "S" in spec and block["S"] == "-":
                continue
            full = f"stn.features.{block['b']}.conv.{key}"
            dims = shape(substitute(spec.removeprefix("BN"), block))
            shapes |= batch_norm(full, dims[0]) if spec.startswith("BN") else {full: dims}
    return shapes


def substitute(spec: str, block: dict[str, str]) -> str:
    """A shape template such as ``(E, I, 1, 1)`` with a block's widths put in."""
    return re.sub(r"[A-Z]", lambda letter: block[letter[0]], spec)


def test_checkpoint_doc_matches_the_official_listing() -> None:
    official = {}
    for line in OFFICIAL_TABLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            key, dims = line.split("\t")
            official[key] = shape(dims)
    documented = documented_official_shapes()
    assert len(official) == 320
    assert documented == official, (
        f"only in the doc: {sorted(documented.keys() - official.keys())[:5]}, "
        f"only in the TSV: {sorted(official.keys() - documented.keys())[:5]}, "
        f"shape differs: {[k for k in documented.keys() & official.keys() if documented[k] != official[k]][:5]}"
    )
