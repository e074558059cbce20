"""The local stack's mail catcher: an SMTP server on 127.0.0.1 that keeps every message.

`leadflow up` points the nurture mailer at it when no SMTP server or email
service is configured (NURTURE_SMTP_HOST, NURTURE_SMTP_PORT, NURTURE_WEBHOOK_URL),
so the sample leads' follow-up email can be read as files instead of failing
against port 25 and filling `dlq.mailer`. Each message is written as
`<data dir>/mail/NNNNNN-<recipient>.eml`, openable by any mail program.
"""

from __future__ import annotations

import itertools
import re
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from leadflow_tools.broker.local import free_port

_UNSAFE = re.compile(r"[^A-Za-z0-9@._-]+")


class MailCatcher:
    """aiosmtpd's handler: every message to a file of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        start = max((int(p.name[:6]) for p in folder.glob("[0-9]" * 6 + "-*.eml")), default=0)
        self._numbers = itertools.count(start + 1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        recipient = _UNSAFE.sub("_", (envelope.rcpt_tos or ["unknown"])[0])[:80]
        with self._lock:
            number = next(self._numbers)
        (self.folder / f"{number:06d}-{recipient}.eml").write_bytes(envelope.original_content)
        return "250 OK"


def start(folder: Path) -> tuple[Controller, int]:
    """A catcher on a free local port; stop it with `.stop()`."""
    port = free_port()
    controller = Controller(MailCatcher(folder), hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port
