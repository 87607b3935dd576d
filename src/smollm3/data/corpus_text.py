"""Turning documentation formats into paragraphs of plain text, and telling their language apart.

Every converter returns a list of paragraphs (strings without blank lines), so the language filter can judge
paragraph by paragraph: translated Debian documentation falls back to English wherever a translation is missing,
and a page-level language tag would let that English through.

Formats: HTML (LibreOffice help, DocBook manuals), Mallard XML (GNOME help), roff man pages (man and mdoc
macros), OSIS verse markup (SWORD Bible modules). All of it is the standard library only.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

# ------------------------------------------------------------------------------------------------------------------
# paragraphs


class _Paragraphs:
    """Collects text into paragraphs: inline text joins with single spaces, block boundaries start a new
    paragraph, preformatted text keeps its lines."""

    def __init__(self):
        self.done: list[str] = []
        self.buf: list[str] = []
        self.pre = 0

    def text(self, s: str):
        if s:
            self.buf.append(s)

    def flush(self):
        raw = "".join(self.buf)
        self.buf = []
        if self.pre:
            lines = [ln.rstrip() for ln in raw.strip("\n").split("\n")]
            para = "\n".join(ln for ln in lines if ln.strip())
        else:
            para = " ".join(raw.split())
        if para.strip():
            self.done.append(para)


_HTML_BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr", "td", "th", "table", "ul",
               "ol", "dl", "blockquote", "section", "article", "br", "hr", "title", "caption", "figcaption", "pre"}
_HTML_SKIP = {"script", "style", "head", "header", "footer", "nav", "aside", "noscript", "button", "select", "form",
              "svg", "math", "object", "iframe"}
# navigation boxes of DocBook output ("Prev / Up / Next"), not prose
_HTML_SKIP_CLASS = {"navheader", "navfooter", "toc", "breadcrumbs"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _HTMLText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out = _Paragraphs()
        self.stack: list[tuple[str, bool]] = []  # (tag, starts a skipped region)
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in _HTML_SKIP or bool(classes & _HTML_SKIP_CLASS)
        if tag not in _VOID:
            self.stack.append((tag, skip))
        if skip:
            self.skipping += 1
            if tag in _VOID:
                self.skipping -= 1
            return
        if self.skipping:
            return
        if tag in _HTML_BLOCK:
            self.out.flush()
        if tag == "pre":
            self.out.pre += 1

    def handle_endtag(self, tag):
        if not any(t == tag for t, _ in self.stack):
            return  # stray end tag
        while self.stack:  # close implicitly closed children too (<p> without </p>, ...)
            t, skip = self.stack.pop()
            if skip:
                self.skipping -= 1
            elif not self.skipping:
                if t in _HTML_BLOCK:
                    self.out.flush()
                if t == "pre":
                    self.out.pre = max(0, self.out.pre - 1)
            if t == tag:
                break

    def handle_data(self, data):
        if not self.skipping:
            self.out.text(data)


def html_to_paragraphs(source: str) -> list[str]:
    parser = _HTMLText()
    parser.feed(source)
    parser.close()
    parser.out.flush()
    return parser.out.done


_MAL_BLOCK = {"page", "title", "subtitle", "desc", "p", "item", "td", "th", "tr", "note", "section", "list", "terms",
              "tree", "steps", "table", "figure", "example", "quote", "synopsis", "comment", "cite", "caption"}
_MAL_PRE = {"code", "screen"}  # as blocks (children of a page or section), they are preformatted
_MAL_SKIP = {"info", "credit", "license", "revision", "media", "links", "include", "fallback"}


def mallard_to_paragraphs(source: str | bytes) -> list[str]:
    """GNOME help pages (Mallard 1.0). The <info> block (credits, licence, links) is not prose and is skipped."""
    root = ET.fromstring(source)
    out = _Paragraphs()

    def local(tag) -> str:
        return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""

    def walk(el, block_parent: bool):
        name = local(el.tag)
        if name in _MAL_SKIP:
            out.text(" ")
            return
        pre = name in _MAL_PRE and block_parent
        block = name in _MAL_BLOCK or pre
        if block:
            out.flush()
            out.pre += pre
        out.text(el.text or "")
        for k, child in enumerate(el):
            if name == "keyseq" and k:
                out.text("+")  # <keyseq><key>Ctrl</key><key>C</key></keyseq> -> Ctrl+C
            walk(child, block)
            out.text(child.tail or "")
        if block:
            out.flush()
            out.pre -= pre

    walk(root, True)
    out.flush()
    return out.done


# ------------------------------------------------------------------------------------------------------------------
# roff (man pages)

_ROFF_GLYPHS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d", "oq": "\u2018",
    "cq": "\u2019", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "de": "\u00b0", "mu": "\u00d7",
    "+-": "\u00b1", ">=": "\u2265", "<=": "\u2264", "->": "\u2192", "<-": "\u2190", "rs": "\\", "ti": "~", "ha": "^",
    "ga": "`", "ua": "\u2191", "da": "\u2193", "Fo": "\u00ab", "Fc": "\u00bb", "fo": "\u2039", "fc": "\u203a",
    "r!": "\u00a1", "r?": "\u00bf", "ss": "\u00df", "sc": "\u00a7", "ps": "\u00b6", "ct": "\u00a2", "Eu": "\u20ac",
    "eu": "\u20ac", "at": "@", "sh": "#", "sl": "/", "pl": "+", "mi": "-", "eq": "=", "lB": "[", "rB": "]",
    "lC": "{", "rC": "}", "ba": "|", "or": "|", "no": "\u00ac", "tno": "\u00ac", "12": "\u00bd", "14": "\u00bc",
    "34": "\u00be", "R": "\u00ae", "Tm": "\u2122", "dg": "\u2020", "dd": "\u2021", "nbsp": " ",
}
_ROFF_ESCAPE = re.compile(
    r"\\(?:"
    r"f(?:\[[^\]]*\]|\(..|.)"          # font change
    r"|s[+-]?(?:\d|\(\d\d|\[\d+\])"     # size change
    r"|\((..)"                          # \(xx glyph
    r"|\[([^\]]*)\]"                    # \[name] glyph
    r"|\*(?:\((..)|\[([^\]]*)\]|(.))"   # string register
    r"|[hvwlLNoDbxXSZkmMYzRV]'[^']*'"   # motions, width, ... with quoted argument
    r"|[kmMnYzgV](?:\(..|\[[^\]]*\]|.)"  # registers
    r"|(.))", re.DOTALL)
_ROFF_STRINGS = {"lq": "\u201c", "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122", "aq": "'"}
_FONT_MACROS = {"B", "I", "R", "SM", "SB", "BR", "BI", "IB", "IR", "RB", "RI", "CW", "CB", "CI"}
_PARA_MACROS = {"PP", "P", "LP", "Pp", "sp", "br", "TP", "HP", "TQ", "IP", "It", "Bl", "El", "Bd", "Ed", "RS", "RE",
                "in", "ti", "ne", "bp", "Lp"}
_HEADING_MACROS = {"SH", "SS", "Sh", "Ss"}
# mdoc inline macros whose arguments are plain words; the macro name itself is dropped
_MDOC_INLINE = {"Ar", "Cm", "Ic", "Em", "Sy", "Li", "Pa", "Va", "Ev", "Dv", "Er", "Fn", "Fa", "Ft", "Vt", "Nd", "Tn",
                "Ql", "Ms", "Lb", "Ad", "An", "Lk", "Mt", "Cd", "Xo", "Xc", "No", "Ns", "St", "Ux", "Bx", "At",
                "Bsx", "Fx", "Nx", "Ox", "Dx", "Aq", "Bq", "Brq", "Dq", "Op", "Pq", "Qq", "Sq", "Eo", "Ec", "Oo",
                "Oc", "Ao", "Ac", "Bo", "Bc", "Do", "Dc", "Po", "Pc", "Qo", "Qc", "So", "Sc", "Ta", "Xr", "Fl", "Nm",
                "D1", "Dl", "Ot", "Sx", "Pf", "Fo", "Fc", "In", "Rs", "Re", "%A", "%B", "%T", "%J", "%N", "%V", "%D",
                "%P", "%O", "%Q", "%R", "%I", "%C", "%U"}
_MDOC_WRAP = {"Dq": ("\u201c", "\u201d"), "Sq": ("\u2018", "\u2019"), "Qq": ('"', '"'), "Pq": ("(", ")"),
              "Op": ("[", "]"), "Bq": ("[", "]"), "Brq": ("{", "}"), "Aq": ("<", ">")}


def _roff_inline(s: str) -> str:
    def sub(m):
        glyph = m.group(1) or m.group(2)
        if glyph is not None:
            if glyph[:1] == "u" and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", glyph):  # \[u00E9]
                return chr(int(glyph[1:], 16))
            return _ROFF_GLYPHS.get(glyph, "")
        string = m.group(3) or m.group(4) or m.group(5)
        if string is not None:
            return _ROFF_STRINGS.get(string, "")
        ch = m.group(6)
        if ch is None:
            return ""
        return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": ".",
                '"': "", "t": " "}.get(ch, "")

    s = s.split('\\"', 1)[0]  # a comment runs to the end of the line
    return _ROFF_ESCAPE.sub(sub, s)


def _roff_args(rest: str) -> list[str]:
    """Macro arguments: whitespace-separated, double quotes group words."""
    args, cur, quoted, i = [], [], False, 0
    while i < len(rest):
        c = rest[i]
        if c == '"':
            if quoted and i + 1 < len(rest) and rest[i + 1] == '"':
                cur.append('"')
                i += 1
            else:
                quoted = not quoted
                if not quoted:
                    args.append("".join(cur))
                    cur = []
        elif c.isspace() and not quoted:
            if cur:
                args.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        args.append("".join(cur))
    return args


def roff_to_paragraphs(source: str) -> list[str]:
    """Man pages in the man and mdoc macro sets, as `man` would show the words (no layout).

    Requests that only steer layout are dropped, macro definitions and conditionals are skipped (they hold
    layout logic, not prose), the synopsis and option tags become their own short paragraphs."""
    out = _Paragraphs()
    lines = source.replace("\r\n", "\n").split("\n")
    in_macro_def = False
    in_table = False
    name = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        while line.endswith("\\") and not line.endswith("\\\\") and i < len(lines):  # continuation line
            line = line[:-1] + lines[i]
            i += 1
        if in_macro_def:
            in_macro_def = not line.startswith("..")
            continue
        if line.startswith((".", "'")):
            req = line[1:].lstrip()
            macro, _, rest = req.partition(" ")
            macro = macro.strip()
            rest = rest.strip()
            if macro in ("de", "de1", "am", "ig"):
                in_macro_def = True
            elif macro == "TS":
                in_table = True
                out.flush()
            elif macro == "TE":
                in_table = False
                out.flush()
            elif macro in ("nf", "EX", "Bd") and not out.pre:
                out.flush()
                out.pre = 1
            elif macro in ("fi", "EE", "Ed"):
                out.flush()
                out.pre = 0
            elif macro in _HEADING_MACROS:
                out.flush()
                out.text(_roff_inline(" ".join(_roff_args(rest))))
                out.flush()
            elif macro in _PARA_MACROS:
                out.flush()
                if macro in ("IP", "It") and rest:  # the item tag is a short paragraph of its own
                    args = _roff_args(rest)
                    tag = args[0] if macro == "IP" else _mdoc_words(args, name)
                    out.text(_roff_inline(tag))
                    out.flush()
            elif macro in _FONT_MACROS:
                args = _roff_args(rest)
                if not args and i < len(lines):  # `.B` alone applies to the next line
                    args = [lines[i]]
                    i += 1
                joiner = "" if len(macro) == 2 and macro not in ("SM", "SB", "CW") else " "
                out.text(_roff_inline(joiner.join(args)) + (" " if not out.pre else "\n"))
            elif macro in _MDOC_INLINE:
                args = _roff_args(rest)
                if macro == "Nm" and args and not name:
                    name = args[0]
                out.text(_roff_inline(_mdoc_words([macro] + args, name)) + (" " if not out.pre else "\n"))
            elif macro in ("UR", "MT"):
                continue  # the link text follows; the address itself is not prose
            elif macro in ("UE", "ME"):
                out.text(" " + _roff_inline(" ".join(_roff_args(rest))) + " ")
            elif macro in ("SY", "OP"):
                out.text(_roff_inline(" ".join(_roff_args(rest))) + " ")
            elif macro == "YS":
                out.flush()
            continue  # every other request (.TH .so .if .ie .el .ds .nr .ad .nh .IX ...) carries no prose
        if in_table:
            continue
        text = _roff_inline(line)
        if out.pre:
            out.text(text + "\n")
        elif not text.strip():
            out.flush()  # a blank line is a paragraph break in roff
        else:
            out.text(text + " ")
    out.flush()
    return out.done


def _mdoc_words(args: list[str], name: str) -> str:
    """mdoc: `.Fl a Ar file` -> `-a file`, `.Xr ls 1` -> `ls(1)`, `.Dq word` -> quoted word."""
    words: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "Fl":
            nxt = args[i + 1] if i + 1 < len(args) and args[i + 1] not in _MDOC_INLINE else ""
            words.append("-" + nxt)
            i += 2 if nxt else 1
            continue
        if a == "Xr" and i + 2 < len(args) + 1:
            rest = args[i + 1:i + 3]
            words.append(f"{rest[0]}({rest[1]})" if len(rest) == 2 else " ".join(rest))
            i += 3
            continue
        if a == "Nm":
            nxt = args[i + 1] if i + 1 < len(args) and args[i + 1] not in _MDOC_INLINE else ""
            words.append(nxt or name)
            i += 2 if nxt else 1
            continue
        if a in _MDOC_WRAP:
            left, right = _MDOC_WRAP[a]
            inner = _mdoc_words(args[i + 1:], name)
            words.append(left + inner + right)
            break
        if a in ("Ns", "No", "Pf", "Xo", "Xc", "Ta", "Eo", "Ec", "Oo", "Oc", "Ao", "Ac", "Bo", "Bc", "Do", "Dc",
                 "Po", "Pc", "Qo", "Qc", "So", "Sc") or a in _MDOC_INLINE:
            i += 1
            continue
        words.append(a)
        i += 1
    text = " ".join(words)
    return re.sub(r" ([,.;:)\]])", r"\1", text)


# ------------------------------------------------------------------------------------------------------------------
# OSIS (SWORD Bible modules)

_OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
_OSIS_TITLE = re.compile(r"<title\b.*?</title>", re.DOTALL)
_OSIS_BREAK = re.compile(r"<(?:div\b[^>]*\btype=\"x-p\"|lb\b[^>]*type=\"x-p\"|p\b)[^>]*>")
_OSIS_LINE = re.compile(r"<(?:l\b[^>]*\bsID=|lb\b)[^>]*>")
_OSIS_WORDS = re.compile(r"</w>\s*<w\b")
_TAG = re.compile(r"<[^>]+>")


def osis_to_text(verse: str) -> str:
    """One verse of OSIS markup -> text, with "\\n\\n" where a paragraph starts and "\\n" at poetry lines.

    Footnotes and editorial headings are dropped. Adjacent word elements get a space, because a removed
    footnote between two words would otherwise glue them ("Godcreated")."""
    s = _OSIS_NOTE.sub("", verse)
    s = _OSIS_TITLE.sub("", s)
    s = _OSIS_WORDS.sub("</w> <w", s)
    s = _OSIS_BREAK.sub("\n\n", s)
    s = _OSIS_LINE.sub("\n", s)
    s = html.unescape(_TAG.sub("", s))
    return re.sub(r"[ \t]+", " ", s)


# ------------------------------------------------------------------------------------------------------------------
# language identification

# Frequent function words. A word shared by several languages counts 1/(number of languages) for each, so the
# words that tell languages apart (des, und, não, della, the) decide.
STOPWORDS = {
    "en": """the of and to in is that it for on with as was be are by this at from or an not have which but they his
        her he she we you can will if has had their there been were all one more when its do so these them would what
        your our also may any each than other into only such then some how about who were between should must does
        after before while because through under over where those here being most many very""",
    "fr": """le la les de des du un une et est en que qui dans pour pas sur au aux par ce cette ces il elle ils elles
        nous vous on ne se sa son ses leur leurs avec plus ou mais comme être sont été fait peut tout tous toutes si
        où lorsque lors dont aussi très sans avoir ont sous entre cet même autre autres doit donc car afin chaque
        votre vos puis quand ainsi alors déjà peu celui celle ceux qu""",
    "es": """el la los las de del y en que es un una por para con no se su sus al lo como más pero este esta estos
        estas ese esa son ser está están fue ha han hay si sobre entre cuando también sin le les puede desde todo
        todos muy ya porque donde cada otro otra otros usted ni hasta según pueden debe él ella ellos nos mismo
        aquí así""",
    "de": """der die das und ist in zu den dem des ein eine einen einem einer nicht mit von auf für sich es wird
        werden sind auch als an bei oder wenn aus nach wie dass kann können im zum zur durch über noch nur um so hat
        haben sie er wir ihr ihre ihrem ihren diese dieser dieses man sein wurde bis unter vor alle keine kein
        muss müssen sollte wo dann hier""",
    "it": """il lo la i gli le di del della dei delle degli e è che un una per non con da dal dalla nel nella si
        come più ma o sono essere questo questa questi queste anche se al alla ai alle sul sulla può viene tutti tra
        fra quando dove ha hanno cui ogni ci molto sua suo loro stato quello quella già solo però dello nei
        possono deve""",
    "pt": """o a os as de do da dos das e é que um uma para com não em no na nos nas por se seu sua seus suas ao à
        como mais mas ou este esta estes estas isso esse essa são ser está estão foi tem também quando pelo pela
        pode entre sobre já muito sem onde cada você ele ela eles pelos pelas num numa aos às ainda até""",
}
LANGS = tuple(STOPWORDS)
_WEIGHTS: dict[str, dict[str, float]] = {}
for _lang, _words in STOPWORDS.items():
    for _w in set(_words.split()):
        _WEIGHTS.setdefault(_w, {})[_lang] = 1.0
for _w, _by in _WEIGHTS.items():
    for _lang in _by:
        _by[_lang] = 1.0 / len(_by)
_WORD = re.compile(r"[^\W\d_]+")


def language_scores(text: str) -> tuple[dict[str, float], dict[str, set[str]]]:
    """Per language: the weighted count of its function words in `text`, and which distinct ones occurred."""
    scores, seen = dict.fromkeys(LANGS, 0.0), {lang: set() for lang in LANGS}
    for w in _WORD.findall(text.lower()):
        for lang, weight in _WEIGHTS.get(w, {}).items():
            scores[lang] += weight
            seen[lang].add(w)
    return scores, seen


def detect_language(text: str, min_score: float = 2.0, margin: float = 1.5) -> str | None:
    """The language whose function words dominate `text`, or None when the evidence is too thin to say
    (headings, commands, formulas, lists of names) or two languages are too close. Evidence needs two different
    function words: one repeated letter ("A1:A3") says nothing."""
    scores, seen = language_scores(text)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    (best, s1), (_, s2) = ranked[0], ranked[1]
    if s1 < min_score or s1 < margin * s2 or len(seen[best]) < 2:
        return None
    return best


def filter_paragraphs(paragraphs: list[str], lang: str, max_short_words: int = 12) -> list[str]:
    """Keep the paragraphs written in `lang`.

    A paragraph the detector cannot decide (too few function words) is kept only when it is short (a heading,
    a list item, a command) and the nearest decided paragraph after it (before it, at the end) is in `lang`:
    headings stay with their sections, untranslated English sections drop out whole."""
    decided = [detect_language(p) for p in paragraphs]
    keep = []
    for i, (para, d) in enumerate(zip(paragraphs, decided)):
        if d is not None:
            if d == lang:
                keep.append(para)
            continue
        if len(para.split()) > max_short_words:
            continue
        context = next((x for x in decided[i + 1:] if x is not None), None)
        if context is None:
            context = next((x for x in reversed(decided[:i]) if x is not None), None)
        if context == lang:
            keep.append(para)
    return keep
