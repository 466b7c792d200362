"""A policy plugin: roles from passwords, but the audience (listeners) may not chat."""

from zope.interface import implementer

from ahoyconference.interfaces import Action, IPolicyPlugin, Role
from ahoyconference.policy import PasswordPolicy


class WebinarPolicy(PasswordPolicy):
    """Protocol.md 4.2 roles; chatting needs at least C{chatRole}."""

    name = "webinar"

    def __init__(self, chatRole: Role):
        self.chatRole = chatRole

    def mayRequest(self, client, role, action, settings):
        """As the password policy, except for chat."""
        if action is Action.CHAT:
            return role >= self.chatRole
        return super().mayRequest(client, role, action, settings)


@implementer(IPolicyPlugin)
class WebinarPlugin:
    """The plugin: C{[policy] name = "webinar"}, optional C{chat_role}."""

    name = "webinar"
    description = "Roles from passwords; listeners may not chat."

    def makePolicy(self, options, reactor):
        """Make the policy; a wrong option is a ValueError naming its key."""
        chatRole = options.pop("chat_role", "speaker")
        if chatRole not in ("listener", "speaker", "moderator") or options:
            raise ValueError(f"[policy] {next(iter(options), 'chat_role')}: not understood")
        return WebinarPolicy(Role[chatRole.upper()])


webinar = WebinarPlugin()
