"""The version docgate reports: in /health, in each capture record, in its user agent."""

VERSION = "0.1.0"


def user_agent(contact: str | None) -> str:
    """What clients send origins unless told otherwise: who we are and how to reach the operator
    (OPERATOR_CONTACT, a URL or an e-mail address), as crawlers do (`+` before the contact)."""
    return f"docgate/{VERSION} (+{contact})" if contact else f"docgate/{VERSION}"
