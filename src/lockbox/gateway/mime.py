"""Reading a staff member's email with the standard library's ``email`` package (policy.default decodes
headers, charsets and transfer encodings): its subject, its text and its files. Anything that is not
well-formed MIME is refused whole, so a mail is either taken in completely or not at all."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import errors, policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser

from lockbox.gateway.exceptions import MALFORMED, Bounce
from lockbox.messaging.service import clean_filename, sniff_type

# Defects that mean the structure or the encoding is broken (a lone odd header is tolerated, as mail
# servers do): a missing or unclosed boundary, a header/body split that is not there, bad base64.
_BROKEN = (
    errors.NoBoundaryInMultipartDefect, errors.StartBoundaryNotFoundDefect, errors.CloseBoundaryNotFoundDefect,
    errors.MultipartInvariantViolationDefect, errors.MissingHeaderBodySeparatorDefect,
    errors.FirstHeaderLineIsContinuationDefect, errors.MisplacedEnvelopeHeaderDefect,
    errors.InvalidBase64PaddingDefect, errors.InvalidBase64CharactersDefect, errors.InvalidBase64LengthDefect,
    errors.InvalidMultipartContentTransferEncodingDefect,
)
MAX_BODY_CHARS = 20_000
MAX_SUBJECT_CHARS = 200
MAX_FILES = 20
_SPACES = re.compile(r"[ \t]+\n")


@dataclass(frozen=True)
class File:
    name: str
    content_type: str
    data: bytes


@dataclass
class Mail:
    subject: str
    body: str
    files: list[File] = field(default_factory=list)


class _Text(HTMLParser):
    """The readable text of an HTML-only mail (no library for this is among our dependencies, and the
    stdlib parser needs only this much): text nodes, line breaks at block ends, scripts and styles dropped."""

    _BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    p = _Text()
    p.feed(html)
    p.close()
    text = _SPACES.sub("\n", "".join(p.parts))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _text_of(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError, UnicodeError) as exc:  # an unknown charset, say
        raise Bounce(MALFORMED, "malformed") from exc
    return content if isinstance(content, str) else ""


def parse(raw: bytes, *, max_file_bytes: int) -> Mail:
    """The mail's subject, text and files; raises Bounce for broken MIME, refused or oversized files."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    if not msg.keys():
        raise Bounce(MALFORMED, "malformed")
    plain: list[str] = []
    html: list[str] = []
    files: list[File] = []
    for part in msg.walk():
        if any(isinstance(d, _BROKEN) for d in part.defects):
            raise Bounce(MALFORMED, "malformed")
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        ctype = part.get_content_type()
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not part.get_filename():
            (plain if ctype == "text/plain" else html).append(_text_of(part))
            continue
        data = part.get_payload(decode=True)
        # Decoding records bad base64 as defects on the part (and hands back the raw text).
        if any(isinstance(d, _BROKEN) for d in part.defects):
            raise Bounce(MALFORMED, "malformed")
        if not isinstance(data, bytes) or not data:
            continue
        if len(data) > max_file_bytes:
            raise Bounce(f"552 5.3.4 An attachment is larger than {max_file_bytes // (1024 * 1024)} MiB; "
                         "nothing was stored.", "attachment_too_large")
        content_type = sniff_type(data)
        if content_type is None:
            raise Bounce("554 5.6.1 Attach images (PNG, JPEG, GIF, WebP) or PDF documents only; "
                         "nothing was stored.", "attachment_type")
        files.append(File(clean_filename(part.get_filename() or f"attachment-{len(files) + 1}"),
                          content_type, data))
    if any(isinstance(d, _BROKEN) for part in msg.walk() for d in part.defects):  # text parts decoded above
        raise Bounce(MALFORMED, "malformed")
    if len(files) > MAX_FILES:
        raise Bounce(f"552 5.3.4 At most {MAX_FILES} attachments per message; nothing was stored.",
                     "too_many_files")
    body = "\n\n".join(t.strip() for t in plain if t.strip())
    if not body and html:
        body = "\n\n".join(html_to_text(h) for h in html if h.strip())
    body = body.replace("\r\n", "\n").strip()
    if len(body) > MAX_BODY_CHARS:
        raise Bounce(f"552 5.3.4 The message text is longer than {MAX_BODY_CHARS:,} characters; send the long "
                     "part as a PDF attachment. Nothing was stored.", "body_too_long")
    subject = " ".join(str(msg.get("subject", "") or "").split())
    return Mail(subject=subject, body=body, files=files)


def strip_keyword(subject: str, keyword: str) -> tuple[str, bool]:
    """The subject without the keyword (any case) and whether it was there."""
    pattern = re.compile(re.escape(keyword), re.IGNORECASE)
    stripped, n = pattern.subn(" ", subject)
    return " ".join(stripped.split()), n > 0
