"""Corpus converters, language filter and builder, on small inline fixtures (nothing is downloaded)."""

import io
import json
import os
import struct
import tarfile
import zlib

import pytest

from smollm3.data import corpus
from smollm3.data.corpus import CorpusError, build_code, build_corpus, read_deb, sword_books
from smollm3.data.corpus_text import (
    detect_language,
    filter_paragraphs,
    html_to_paragraphs,
    mallard_to_paragraphs,
    osis_to_text,
    roff_to_paragraphs,
)

SENTENCES = {
    "en": "The installer asks for the name of the computer and then it copies all the files to the disk.",
    "fr": "Le programme d'installation demande le nom de l'ordinateur et copie ensuite tous les fichiers sur le disque.",
    "es": "El instalador pide el nombre del ordenador y después copia todos los archivos en el disco.",
    "de": "Das Installationsprogramm fragt nach dem Namen des Rechners und kopiert dann alle Dateien auf die Platte.",
    "it": "Il programma di installazione chiede il nome del computer e poi copia tutti i file sul disco.",
    "pt": "O instalador pede o nome do computador e depois copia todos os ficheiros para o disco.",
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_detect_language_on_each_language(lang):
    assert detect_language(SENTENCES[lang]) == lang


def test_detect_language_abstains_on_thin_evidence():
    for text in ("Formatieren", "apt-get install -y foo", "=SUMME(A1:A3)", "OK"):
        assert detect_language(text) is None


def test_filter_keeps_target_language_and_its_headings_drops_english_fallback():
    rest = "Der Rest ist einfach und kann mit den Standardwerten übernommen werden, wenn man nichts ändern will."
    paras = ["Einleitung", SENTENCES["de"], "Introduction", SENTENCES["en"], "Schluss", rest]
    kept = filter_paragraphs(paras, "de")
    # "Introduction" sits before an English paragraph: it goes with it
    assert kept == ["Einleitung", SENTENCES["de"], "Schluss", paras[-1]]


def test_html_skips_chrome_and_keeps_blocks():
    page = """<html><head><title>T</title><script>var x = 1;</script></head><body>
    <header><p>Hilfe für LibreOffice</p></header><aside>Inhalte</aside>
    <div class="navheader">Zurück Weiter</div>
    <h1>Gliederung</h1><p>Erstellt aus der <span class="emph">Gliederung</span>
      ein neues   Dokument.</p>
    <ul><li>Eins<li>Zwei</ul><pre>ls -l
  /tmp</pre><p>A &amp; B</p><footer>footer text</footer></body></html>"""
    assert html_to_paragraphs(page) == ["Gliederung", "Erstellt aus der Gliederung ein neues Dokument.", "Eins",
                                        "Zwei", "ls -l\n  /tmp", "A & B"]


def test_mallard_skips_info_and_joins_keys():
    page = b"""<?xml version="1.0" encoding="utf-8"?>
<page xmlns="http://projectmallard.org/1.0/" xmlns:ui="http://projectmallard.org/ui/1.0/" id="x" xml:lang="de">
  <info><credit><name>Someone</name></credit><desc>Beschreibung</desc></info>
  <title>Dateien kopieren</title>
  <p>Dr\xc3\xbccken Sie <keyseq><key>Strg</key><key>C</key></keyseq> zum Kopieren.</p>
  <steps><item><p>Erster Schritt</p></item></steps>
  <screen>cp a b
mv b c</screen>
</page>"""
    assert mallard_to_paragraphs(page) == ["Dateien kopieren", "Drücken Sie Strg+C zum Kopieren.", "Erster Schritt",
                                           "cp a b\nmv b c"]


def test_roff_man_macros_and_escapes():
    page = r""".\" comment
.TH LS 1 "2022" "GNU" "Benutzer"
.de XX
.ft B
..
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten
.SH BESCHREIBUNG
.PP
Auflistung von \fBInformationen\fP \(em mit \fI\,DATEI\/\fR und Caf\[u00E9].
.TP
.BR \-a ", " \-\-all
Einträge nicht ignorieren
.nf
zeile 1
  zeile 2
.fi
.TS
tab(;);
a;b
.TE
Ende.
"""
    assert roff_to_paragraphs(page) == [
        "BEZEICHNUNG", "ls - Verzeichnisinhalte auflisten", "BESCHREIBUNG",
        "Auflistung von Informationen \u2014 mit DATEI und Café.", "-a, --all Einträge nicht ignorieren",
        "zeile 1\n  zeile 2", "Ende."]


def test_roff_mdoc_macros():
    page = """.Dd May 1, 2020
.Dt CAT 1
.Sh NAME
.Nm cat
.Nd concatenate files
.Sh DESCRIPTION
The
.Nm
utility reads files, see
.Xr head 1 .
.It Fl n
Number the lines.
"""
    assert roff_to_paragraphs(page) == ["NAME", "cat concatenate files", "DESCRIPTION",
                                        "The cat utility reads files, see head(1).", "-n", "Number the lines."]


def test_osis_drops_notes_and_keeps_words_apart():
    verse = ('<div sID="gen26" type="x-p"/><w lemma="strong:H0430">God</w><note placement="foot">'
             '<reference>1:1</reference>The Hebrew word</note><w lemma="x">created</w> the <w>heavens</w>.')
    assert osis_to_text(verse) == "\n\nGod created the heavens."


def _ztext(verses: list[str]) -> dict[str, bytes]:
    """A SWORD zText testament as the documented layout: one zlib block, 10-byte verse entries."""
    block = "".join(verses).encode()
    comp = zlib.compress(block)
    bzs = struct.pack("<III", 0, len(comp), len(block))
    bzv, off = b"", 0
    for v in verses:
        n = len(v.encode())
        bzv += struct.pack("<IIH", 0, off, n)
        off += n
    return {"mod/ot.bzs": bzs, "mod/ot.bzv": bzv, "mod/ot.bzz": comp}


def test_sword_module_reads_books_in_order():
    verses = ['<div osisID="Gen" type="book"/>', '<chapter osisID="Gen.1" sID="Gen.1"/>',
              "<w>In</w> <w>the</w> <w>beginning</w>.", " <w>Second</w> verse.",
              '<chapter osisID="Exod.1" sID="Exod.1"/>', '<div type="x-p" sID="p1"/>Now these are the names.']
    books = sword_books(_ztext(verses))
    assert books == [("Gen", ["In the beginning. Second verse."]), ("Exod", ["Now these are the names."])]


# ---- .deb handling and the builder


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(directory, package: str, version: str, files: dict[str, bytes]):
    """A real .deb (ar archive: debian-binary, control.tar.gz, data.tar.xz), as dpkg-deb builds them."""
    control = _tar({"control": f"Package: {package}\nVersion: {version}\n".encode()}, "w:gz")
    data = _tar(files | {f"usr/share/doc/{package}/copyright": b"License: test\n"}, "w:xz")
    out = b"!<arch>\n"
    for name, blob in (("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.xz", data)):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode() + blob
        out += b"\n" if len(blob) % 2 else b""
    path = directory / f"{package}_{version}_all.deb"
    path.write_bytes(out)
    return path


def test_read_deb_returns_matching_files_and_version(tmp_path):
    deb = make_deb(tmp_path, "pkg", "1.2-3", {"usr/share/x/a.html": b"<p>a</p>", "usr/share/y/b.txt": b"b"})
    control, files = read_deb(deb, r"usr/share/x/.+\.html$")
    assert control["Version"] == "1.2-3" and files == {"usr/share/x/a.html": b"<p>a</p>"}
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not a deb")
    with pytest.raises(CorpusError, match="not a Debian package"):
        read_deb(bad, ".")


def _german_debs(directory):
    page = "<html><body><h1>Titel</h1><p>{}</p><p>{}</p></body></html>"
    de, en = SENTENCES["de"], SENTENCES["en"]
    make_deb(directory, "libreoffice-help-de", "7.4", {
        "usr/share/libreoffice/help/de/text/a.html": page.format(de, de).encode(),
        "usr/share/libreoffice/help/de/text/b.html": page.format(en, en).encode(),  # untranslated fallback
        "usr/share/libreoffice/help/en-US/text/c.html": page.format(en, en).encode()})  # other language: not read
    man = f".TH X 1\n.SH NAME\n.PP\n{de}\n.PP\n{en}\n".encode()
    import gzip
    make_deb(directory, "manpages-de", "4.18", {"usr/share/man/de/man1/x.1.gz": gzip.compress(man)})
    make_deb(directory, "debian-reference-de", "2.1", {"usr/share/debian-reference/ch01.de.html":
                                                       page.format(de, de).encode()})
    mallard = f'<page xmlns="http://projectmallard.org/1.0/"><title>T</title><p>{de}</p></page>'.encode()
    make_deb(directory, "gnome-user-docs", "43", {"usr/share/help/de/gnome-help/a.page": mallard,
                                                  "usr/share/help/fr/gnome-help/a.page": mallard})
    make_deb(directory, "installation-guide-amd64", "2023", {"usr/share/doc/installation-guide-amd64/de/a.html":
                                                             page.format(de, en).encode()})


def test_build_corpus_from_debs_filters_records_licences_and_reruns_instantly(tmp_path, monkeypatch):
    debs = tmp_path / "debs"
    debs.mkdir()
    _german_debs(debs)
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)  # prove apt is never needed with --debs
    out = tmp_path / "out"
    manifest = build_corpus(out, ("de",), code=False, cache=tmp_path / "cache", debs=debs, workers=1)
    records = [json.loads(line) for line in (out / "de" / "libreoffice-help.jsonl").read_text("utf-8").splitlines()]
    assert len(records) == 1  # the English fallback page is dropped whole, en-US is not read
    r = records[0]
    assert r["text"] == f"Titel\n\n{SENTENCES['de']}\n\n{SENTENCES['de']}"
    assert (r["lang"], r["source"], r["package"], r["version"], r["license"]) == (
        "de", "libreoffice-help", "libreoffice-help-de", "7.4", "MPL-2.0")
    for f in ("manpages", "debian-reference", "gnome-user-docs", "installation-guide"):
        for line in (out / "de" / f"{f}.jsonl").read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            assert SENTENCES["en"] not in rec["text"] and SENTENCES["de"] in rec["text"] and rec["license"]
    assert (out / "LICENSES" / "manpages-de.copyright").read_bytes() == b"License: test\n"
    assert manifest["files"]["de/libreoffice-help.jsonl"]["documents"] == 1
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    for p in debs.iterdir():  # a rerun must not even look at the packages
        p.unlink()
    build_corpus(out, ("de",), code=False, cache=tmp_path / "cache", debs=debs, workers=1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")} == before


def test_missing_apt_says_how_to_bring_your_own(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError, match="--debs DIR.*smollm3 data prepare --input"):
        build_corpus(tmp_path / "out", ("it",), code=False, cache=tmp_path / "cache")
    with pytest.raises(CorpusError, match="unknown language"):
        build_corpus(tmp_path / "out", ("xx",), cache=tmp_path / "cache")


def test_cli_reports_a_missing_package_in_debs(tmp_path, capsys):
    from smollm3.cli import main

    (tmp_path / "debs").mkdir()
    rc = main(["corpus", "build", "--out", str(tmp_path / "o"), "--langs", "it", "--no-code",
               "--debs", str(tmp_path / "debs"), "--cache", str(tmp_path / "cache")])
    assert rc == 1
    assert "lacks" in capsys.readouterr().err


def test_python_stdlib_is_at_least_10_mb_of_licensed_code(tmp_path):
    entry = build_code(tmp_path)
    assert entry["text_bytes"] >= 10e6 and entry["license"] == "PSF-2.0"
    with open(tmp_path / entry["file"], encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert first["lang"] == "python" and first["id"].startswith("python-stdlib:") and "import" in first["text"]
    assert os.path.getsize(tmp_path / entry["file"]) == entry["bytes"]
