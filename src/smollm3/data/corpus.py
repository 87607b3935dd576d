"""`smollm3 corpus build`: real multilingual text and code, offline, from Debian documentation packages.

Packages are fetched with `apt-get download` into a cache and read straight out of the .deb (an `ar` archive
holding `data.tar.*`), never installed. Each document is converted to paragraphs (corpus_text.py), filtered
paragraph by paragraph by language, and written as JSONL, one file per source and language:

    OUT/<lang>/<source>.jsonl      {"id", "text", "lang", "source", "package", "version", "license"}
    OUT/code/python-stdlib.jsonl   the running interpreter's standard library (PSF-2.0)
    OUT/LICENSES/<package>.copyright   each package's Debian copyright file, verbatim
    OUT/manifest.json              per file: documents, bytes, package version, share kept by the language filter

A second run skips every file the manifest says is complete (same package version), so it is instant.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import platform
import re
import shutil
import struct
import subprocess
import sysconfig
import tarfile
import xml.etree.ElementTree as ET
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from smollm3.data.corpus_text import (
    filter_paragraphs,
    html_to_paragraphs,
    mallard_to_paragraphs,
    osis_to_text,
    roff_to_paragraphs,
)

CONVERTER_VERSION = 2  # bump when conversion or filtering changes, so cached outputs are rebuilt
LANGS = ("en", "fr", "es", "de", "it", "pt")
MIN_DOC_CHARS = 100  # a page that is only a heading or a link list after filtering is not worth a document


class CorpusError(ValueError):
    pass


@dataclass(frozen=True)
class Part:
    """One language of one source: the package, which of its files to read, how, and under which licence."""
    source: str
    lang: str
    package: str
    members: str  # regex over paths inside the package's data archive
    fmt: str  # html | mallard | man | sword
    license: str


def _parts() -> list[Part]:
    lo = {"en": "en-us", "fr": "fr", "es": "es", "de": "de", "it": "it", "pt": "pt"}
    lo_dir = {"en": "en-US"}
    man_dir = {"pt": "pt_BR"}
    parts = []
    for lang in LANGS:
        parts.append(Part("libreoffice-help", lang, f"libreoffice-help-{lo[lang]}",
                          rf"usr/share/libreoffice/help/{lo_dir.get(lang, lang)}/text/.+\.html$", "html", "MPL-2.0"))
        if lang == "en":
            parts.append(Part("manpages", lang, "manpages", r"usr/share/man/man\d/[^/]+\.gz$", "man",
                              "Linux man-pages licences (GPL-2+, BSD, Linux-man-pages-copyleft; see LICENSES/)"))
        else:
            parts.append(Part("manpages", lang, "manpages-pt-br" if lang == "pt" else f"manpages-{lang}",
                              rf"usr/share/man/{man_dir.get(lang, lang)}/man\d/[^/]+\.gz$", "man", "GPL-3+"))
        parts.append(Part("debian-reference", lang, f"debian-reference-{lang}",
                          rf"usr/share/debian-reference/[^/]+\.{lang}\.html$", "html", "GPL-2+"))
        parts.append(Part("gnome-user-docs", lang, "gnome-user-docs",
                          r"usr/share/help/(?:pt|pt_BR)/gnome-help/[^/]+\.page$" if lang == "pt" else
                          rf"usr/share/help/{'C' if lang == 'en' else lang}/gnome-help/[^/]+\.page$",
                          "mallard", "CC-BY-SA-3.0"))
        parts.append(Part("installation-guide", lang, "installation-guide-amd64",
                          rf"usr/share/doc/installation-guide-amd64/{lang}/[^/]+\.html$", "html", "GPL-2"))
    parts.append(Part("bible", "en", "sword-text-web", r"usr/share/sword/modules/texts/ztext/engWEB2015eb/[on]t\.bz[svz]$",
                      "sword", "public-domain (World English Bible)"))
    parts.append(Part("bible", "es", "sword-text-sparv",
                      r"usr/share/sword/modules/texts/ztext/spaRV1909eb/[on]t\.bz[svz]$", "sword",
                      "public-domain (Reina-Valera 1909)"))
    return parts


PARTS = _parts()


# ------------------------------------------------------------------------------------------------------------------
# .deb files


def read_deb(path: str | os.PathLike, members: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """(control fields, {path: bytes} of the data files whose path matches `members`) from a .deb, without
    installing it. Symlinks and directories are skipped; paths have no leading "./"."""
    path = Path(path)
    blob = path.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise CorpusError(f"{path}: not a Debian package (no ar header); delete it so it is downloaded again")
    entries, pos = {}, 8
    while pos + 60 <= len(blob):
        name = blob[pos:pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48:pos + 58].decode().strip())
        entries[name] = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    control_name = next((n for n in entries if n.startswith("control.tar")), None)
    data_name = next((n for n in entries if n.startswith("data.tar")), None)
    if control_name is None or data_name is None:
        raise CorpusError(f"{path}: no control.tar/data.tar inside; delete it so it is downloaded again")
    control = {}
    for data in _tar_files(path, control_name, entries[control_name], re.compile(r"control$")).values():
        for line in data.decode("utf-8", "replace").splitlines():
            if ":" in line and not line.startswith(" "):
                k, v = line.split(":", 1)
                control[k.strip()] = v.strip()
    pattern = re.compile(members)
    return control, _tar_files(path, data_name, entries[data_name], pattern)


def _tar_files(deb: Path, name: str, data: bytes, pattern: re.Pattern) -> dict[str, bytes]:
    if name.endswith(".zst"):  # Python's tarfile has no zstd before 3.14: let dpkg-deb decompress
        if shutil.which("dpkg-deb") is None:
            raise CorpusError(f"{deb}: {name} is zstd-compressed and dpkg-deb is not installed to read it")
        flag = "--fsys-tarfile" if name.startswith("data") else "--ctrl-tarfile"
        data = subprocess.run(["dpkg-deb", flag, str(deb)], check=True, capture_output=True).stdout
        mode = "r|"
    else:
        mode = "r|*"
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
            for member in tar:
                p = member.name.removeprefix("./")
                if member.isfile() and pattern.search(p):
                    out[p] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as e:
        raise CorpusError(f"{deb}: {name} is damaged ({e}); delete the file so it is downloaded again") from None
    return out


def fetch_debs(packages: list[str], cache: Path, debs_dir: Path | None = None) -> dict[str, Path]:
    """Package name -> .deb path: from `debs_dir` if given, else the cache, downloading what is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for pkg in packages:
        for d in (debs_dir, cache):
            hits = sorted(d.glob(f"{pkg}_*.deb")) if d else []
            if hits:
                found[pkg] = hits[-1]
                break
    missing = [p for p in packages if p not in found]
    if not missing:
        return found
    if debs_dir is not None:
        raise CorpusError(f"--debs {debs_dir} lacks {', '.join(missing)}; fetch them on a Debian machine with "
                          f"`apt-get download {' '.join(missing)}` and copy the .deb files there")
    if shutil.which("apt-get") is None:
        raise CorpusError(
            "apt-get is not available, so the Debian documentation packages cannot be fetched. Either fetch them on a "
            f"Debian/Ubuntu machine (`apt-get download {' '.join(missing)}`) and pass the folder with --debs DIR, or "
            "skip the corpus and use your own text: any .jsonl/.parquet/.txt files go straight to "
            "`smollm3 tokenizer train --corpus` and `smollm3 data prepare --input`.")
    print(f"apt-get download {len(missing)} packages into {cache} ...", flush=True)
    r = subprocess.run(["apt-get", "download", *missing], cwd=cache, capture_output=True, text=True, check=False)
    if r.returncode != 0:  # one bad name fails the whole call: retry one by one to name it
        for pkg in tqdm(missing, desc="apt-get download", unit="pkg"):
            r = subprocess.run(["apt-get", "download", pkg], cwd=cache, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                hint = (" (run `apt-get update` first: the package lists are empty or stale)"
                        if "Unable to locate" in r.stderr or "no installation candidate" in r.stderr else "")
                last = (r.stderr.strip().splitlines() or ["no message"])[-1]
                raise CorpusError(f"apt-get download {pkg} failed{hint}: {last}")
    for pkg in missing:
        hits = sorted(cache.glob(f"{pkg}_*.deb"))
        if not hits:
            raise CorpusError(f"apt-get download {pkg} succeeded but left no {pkg}_*.deb in {cache}")
        found[pkg] = hits[-1]
    return found


# ------------------------------------------------------------------------------------------------------------------
# documents


def sword_books(files: dict[str, bytes]) -> list[tuple[str, list[str]]]:
    """A SWORD zText module (the [on]t.bz{s,v,z} files) -> [(book, paragraphs)], in canonical order.

    .bzs: per compressed block (offset, size, uncompressed size), uint32 each; .bzv: per verse (block, offset
    inside the uncompressed block: uint32, length: uint16); .bzz: the zlib-compressed blocks."""
    books: list[tuple[str, list[str]]] = []
    for testament in ("ot", "nt"):
        key = {ext: next((v for k, v in files.items() if k.endswith(f"{testament}.{ext}")), None)
               for ext in ("bzs", "bzv", "bzz")}
        if any(v is None for v in key.values()):
            continue
        bzs, bzv, bzz = key["bzs"], key["bzv"], key["bzz"]
        blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs) - 11, 12)]
        cache: dict[int, bytes] = {}
        book, text = "front", []
        for i in range(0, len(bzv) - 9, 10):
            b, start, size = struct.unpack_from("<IIH", bzv, i)
            if size == 0 or b >= len(blocks):
                continue
            if b not in cache:
                off, csize, _ = blocks[b]
                cache.clear()  # verses are read in block order: one block in memory at a time
                cache[b] = zlib.decompress(bzz[off:off + csize])
            verse = cache[b][start:start + size].decode("utf-8", "replace")
            m = re.search(r'<chapter\b[^>]*osisID="([^".]+)\.\d+"', verse) or re.search(
                r'<div\b[^>]*osisID="([^".]+)"[^>]*type="book"', verse)
            if m and m.group(1) != book:
                if text:
                    books.append((book, _verse_paragraphs(text)))
                book, text = m.group(1), []
            text.append(osis_to_text(verse))
        if text:
            books.append((book, _verse_paragraphs(text)))
    return books


def _verse_paragraphs(verses: list[str]) -> list[str]:
    paras = []
    for block in " ".join(verses).split("\n\n"):
        lines = [" ".join(line.split()) for line in block.split("\n")]
        para = "\n".join(line for line in lines if line)
        if para:
            paras.append(para)
    return paras


def _documents(part: Part, files: dict[str, bytes]):
    """(id, paragraphs) for each document of one source and language."""
    if part.fmt == "sword":
        for book, paras in sword_books(files):
            yield f"{part.package}:{book}", paras
        return
    for path in sorted(files):
        data = files[path]
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        if part.fmt == "mallard":
            try:
                paras = mallard_to_paragraphs(data)
            except ET.ParseError:  # a page that is not well-formed XML is skipped, not the whole package
                continue
        else:
            text = data.decode("utf-8", "replace")
            paras = html_to_paragraphs(text) if part.fmt == "html" else roff_to_paragraphs(text)
        yield f"{part.package}:{path}", paras


def build_part(part: Part, deb: Path, out_dir: Path) -> dict:
    """Convert and filter one source in one language; write OUT/<lang>/<source>.jsonl atomically."""
    control, files = read_deb(deb, part.members)
    version = control.get("Version", "")
    out = out_dir / part.lang / f"{part.source}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".jsonl.tmp")
    docs = raw = kept = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for doc_id, paras in _documents(part, files):
            raw += len("\n\n".join(paras).encode())
            text = "\n\n".join(filter_paragraphs(paras, part.lang))
            if len(text) < MIN_DOC_CHARS:
                continue
            kept += len(text.encode())
            docs += 1
            f.write(json.dumps({"id": doc_id, "text": text, "lang": part.lang, "source": part.source,
                                "package": part.package, "version": version, "license": part.license},
                               ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return {"file": str(out.relative_to(out_dir)), "source": part.source, "lang": part.lang, "package": part.package,
            "version": version, "license": part.license, "documents": docs, "bytes": out.stat().st_size,
            "text_bytes": kept, "kept_fraction": round(kept / raw, 4) if raw else 0.0}


def build_code(out_dir: Path) -> dict:
    """The running interpreter's standard library sources (no tests, no site-packages) as code documents."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    out = out_dir / "code" / "python-stdlib.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".jsonl.tmp")
    version = platform.python_version()
    docs = text_bytes = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if skip & set(rel.parts[:-1]):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a handful of deliberately mis-encoded files exist; they are not worth special-casing
            if not text.strip():
                continue
            docs += 1
            text_bytes += len(text.encode())
            f.write(json.dumps({"id": f"python-stdlib:{rel.as_posix()}", "text": text, "lang": "python",
                                "source": "python-stdlib", "package": f"python{version}", "version": version,
                                "license": "PSF-2.0"}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return {"file": str(out.relative_to(out_dir)), "source": "python-stdlib", "lang": "python",
            "package": f"python{version}", "version": version, "license": "PSF-2.0", "documents": docs,
            "bytes": out.stat().st_size, "text_bytes": text_bytes, "kept_fraction": 1.0}


def _build_part_job(args):
    part, deb, out_dir = args
    return build_part(part, deb, out_dir)


def _copy_license(deb: Path, package: str, out_dir: Path) -> None:
    dest = out_dir / "LICENSES" / f"{package}.copyright"
    if dest.exists():
        return
    _, files = read_deb(deb, rf"usr/share/doc/{re.escape(package)}/copyright$")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for data in files.values():
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)


def default_cache() -> Path:
    base = os.environ.get("SMOLLM3_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "smollm3")
    return Path(base).expanduser() / "corpus"


SOURCES = tuple(dict.fromkeys(p.source for p in PARTS))


def build_corpus(out_dir: str | os.PathLike, langs: tuple[str, ...] = LANGS, *, code: bool = True,
                 sources: tuple[str, ...] | None = None, cache: str | os.PathLike | None = None,
                 debs: str | os.PathLike | None = None, workers: int | None = None) -> dict:
    """Build the corpus into `out_dir` and return the manifest (also written to OUT/manifest.json).
    `sources` picks some of SOURCES (default all): the miniature recipe takes two small ones."""
    unknown = [lang for lang in langs if lang not in LANGS]
    if unknown:
        raise CorpusError(f"--langs: unknown language(s) {', '.join(unknown)}; choose from {','.join(LANGS)}")
    unknown = [s for s in sources or () if s not in SOURCES]
    if unknown:
        raise CorpusError(f"--sources: unknown source(s) {', '.join(unknown)}; choose from {','.join(SOURCES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("converter_version") != CONVERTER_VERSION:
        manifest = {"converter_version": CONVERTER_VERSION, "files": {}}
    parts = [p for p in PARTS if p.lang in langs and (not sources or p.source in sources)]
    cache_dir = Path(cache) if cache else default_cache()

    def save():
        tmp = manifest_path.with_suffix(".tmp")
        manifest["total_text_mb"] = {lang: round(sum(e["text_bytes"] for e in manifest["files"].values()
                                                     if e["lang"] == lang) / 1e6, 2)
                                     for lang in sorted({e["lang"] for e in manifest["files"].values()})}
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        os.replace(tmp, manifest_path)

    # a part whose output is recorded as complete is skipped before anything is fetched: a rerun is instant
    todo = [p for p in parts if not _recorded(manifest, p, out_dir)]
    if todo:
        debs_found = fetch_debs(sorted({p.package for p in todo}), cache_dir / "debs", Path(debs) if debs else None)
        for pkg, deb in debs_found.items():
            _copy_license(deb, pkg, out_dir)
        jobs = [(p, debs_found[p.package], out_dir) for p in todo]
        # biggest first, so the last worker is not left alone with the largest package
        jobs.sort(key=lambda j: -j[1].stat().st_size)
        workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_build_part_job, job) for job in jobs]
            for fut in tqdm(as_completed(futures), total=len(jobs), desc="corpus", unit="part"):
                entry = fut.result()
                manifest["files"][entry["file"]] = entry
                save()
    if code:
        e = manifest["files"].get("code/python-stdlib.jsonl")
        if not (e and e["version"] == platform.python_version() and _complete(e, out_dir)):
            entry = build_code(out_dir)
            manifest["files"][entry["file"]] = entry
    save()
    return manifest


def _recorded(manifest: dict, part: Part, out_dir: Path) -> bool:
    e = manifest["files"].get(f"{part.lang}/{part.source}.jsonl")
    return bool(e) and e["package"] == part.package and _complete(e, out_dir)


def _complete(entry: dict, out_dir: Path) -> bool:
    f = out_dir / entry["file"]
    return f.exists() and f.stat().st_size == entry["bytes"]


def summary(manifest: dict) -> str:
    """Text MB per language (and code) with the sources behind each."""
    rows = {}
    for e in manifest["files"].values():
        rows.setdefault(e["lang"], []).append(e)
    lines = []
    for lang in sorted(rows, key=lambda x: (x == "python", x)):
        es = sorted(rows[lang], key=lambda e: -e["text_bytes"])
        total = sum(e["text_bytes"] for e in es) / 1e6
        detail = ", ".join(f"{e['source']} {e['text_bytes'] / 1e6:.2f}" for e in es)
        lines.append(f"{lang:>6}: {total:6.2f} MB  ({detail})")
    return "\n".join(lines)
