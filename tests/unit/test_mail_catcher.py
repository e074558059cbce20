"""The local stack's mail catcher keeps each message as an .eml file, numbered on."""

from __future__ import annotations

import email
import smtplib
from email.message import EmailMessage
from pathlib import Path

from leadflow_tools import mail_catcher


def _send(port: int, to: str, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "leadflow@localhost"
    message["Subject"] = subject
    message.set_content("Hello")
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.sendmail("leadflow@localhost", [to], message.as_bytes())


def test_every_message_becomes_a_file_and_a_restart_numbers_on(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    catcher, port = mail_catcher.start(folder)
    try:
        _send(port, "ana@contoso.com", "Welcome")
        _send(port, "../../etc/x@y.z", "Odd recipient")
    finally:
        catcher.stop()
    catcher, port = mail_catcher.start(folder)
    try:
        _send(port, "bo@contoso.com", "Third")
    finally:
        catcher.stop()
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "000001-ana@contoso.com.eml"
    assert names[2] == "000003-bo@contoso.com.eml"
    assert all(p.parent == folder for p in folder.iterdir())  # no path escapes the folder
    third = email.message_from_bytes((folder / names[2]).read_bytes())
    assert third["Subject"] == "Third"
