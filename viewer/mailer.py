"""Sending invitation and password-reset links by email (smtplib), only when configured.

The message carries the link and nothing else about the person: no name, no patient id,
no study, nothing medical (an inbox is not a safe place for it). Nothing is sent unless
``VIEWER_SMTP_HOST`` is set; the caller prints the link either way.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from viewer.config import Config

TIMEOUT_SECONDS = 20

SUBJECTS = {
    "enrol": "Your sign-in for the image viewer",
    "reset": "Reset your sign-in for the image viewer",
}

_BODIES = {
    "enrol": "An account has been made for you to see your images online.\n\n"
             "To choose your password and set up your authenticator app, open this link",
    "reset": "A new sign-in was requested for your account.\n\n"
             "To choose a new password and set up your authenticator app again, open this link",
}


class MailError(RuntimeError):
    """The message could not be handed to the mail server; str() says why."""


def configured(config: Config) -> bool:
    return bool(config.smtp_host)


def invitation_message(
    config: Config, to: str, link: str, purpose: str, hours: int
) -> EmailMessage:
    """The email for one invitation: the link, its lifetime, and what to do if unexpected."""
    message = EmailMessage()
    message["From"] = config.smtp_from
    message["To"] = to
    message["Subject"] = SUBJECTS[purpose]
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = config.smtp_from.rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        f"{_BODIES[purpose]} within {hours} hours:\n\n{link}\n\n"
        "The link works once. Nobody from the clinic will ask you for your password or "
        "for codes from your app.\n\n"
        "If you did not expect this message, you can ignore it: nothing changes until the "
        "link is used.\n"
    )
    return message


def send(config: Config, message: EmailMessage) -> None:
    """Hand the message to the configured server (STARTTLS, or TLS on port 465; login when
    a user is set). Raises ``MailError``."""
    if not configured(config):
        raise MailError("no mail server is configured (VIEWER_SMTP_HOST)")
    context = ssl.create_default_context()
    try:
        if config.smtp_port == 465:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                config.smtp_host, config.smtp_port, timeout=TIMEOUT_SECONDS, context=context
            )
        else:
            client = smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=TIMEOUT_SECONDS)
        with client:
            client.ehlo()
            if config.smtp_starttls and config.smtp_port != 465:
                client.starttls(context=context)
                client.ehlo()
            if config.smtp_user:
                client.login(config.smtp_user, config.smtp_password)
            client.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"{config.smtp_host}:{config.smtp_port}: {exc}") from None


def send_invitation(config: Config, to: str, link: str, purpose: str, hours: int) -> None:
    send(config, invitation_message(config, to, link, purpose, hours))
