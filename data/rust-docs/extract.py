"""Builds rust-docs.txt from Debian's rust-doc package (1.63.0+dfsg1-2).

    apt-get download rust-doc && dpkg-deb -x rust-doc_*.deb pkg
    python3 extract.py pkg/usr/share/doc/rust-doc/html ../text/rust-book.txt > rust-docs.txt

For each mdBook below, the prose of its print.html (everything inside
<main>): headings, paragraphs, list items and definitions, one per line,
whitespace collapsed; code blocks, tables, scripts and navigation dropped;
lines of fewer than three words kept only when they are title-cased
headings. The Rust book itself is left out, and so is any line equal to a
line of the shipped book, so nothing of the book's held-out text is here.
"""
import html.parser
import sys

BOOKS = ["reference", "nomicon", "rust-by-example", "edition-guide",
         "embedded-book", "rustc", "rustdoc"]
BLOCKS = {"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd"}
SKIP = {"pre", "script", "style", "table", "nav", "svg", "button"}
CUT = {"ul", "ol", "blockquote", "div"}


class Prose(html.parser.HTMLParser):
    """Collects the text of block elements inside <main>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.in_main = 0
        self.skip = 0
        self.open = []  # [tag, pieces] of the open block elements
        self.lines = []

    def flush(self):
        if self.open:
            text = " ".join("".join(self.open[-1][1]).split())
            self.open[-1][1] = []
            if text:
                self.lines.append(text)

    def handle_starttag(self, tag, attrs):
        self.in_main += tag == "main"
        if not self.in_main:
            return
        if tag in SKIP:
            self.skip += 1
        elif not self.skip and (tag in BLOCKS or (tag in CUT and self.open)):
            self.flush()
            if tag in BLOCKS:
                self.open.append([tag, []])

    def handle_endtag(self, tag):
        if self.in_main and tag in SKIP:
            self.skip -= 1
        elif self.in_main and not self.skip and self.open and self.open[-1][0] == tag:
            self.flush()
            self.open.pop()
        self.in_main -= tag == "main"

    def handle_data(self, data):
        if self.in_main and not self.skip and self.open:
            self.open[-1][1].append(data)


def prose(path):
    parser = Prose()
    with open(path, encoding="utf-8") as f:
        parser.feed(f.read())
    for line in parser.lines:
        line = line.replace("\u00b6", "").strip()
        if len(line.split()) >= 3 or line.istitle():
            yield line


def main(html_dir, book_path):
    with open(book_path, encoding="utf-8") as f:
        book = {" ".join(line.split()) for line in f}
    for name in BOOKS:
        for line in prose(f"{html_dir}/{name}/print.html"):
            if line not in book:
                print(line)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
