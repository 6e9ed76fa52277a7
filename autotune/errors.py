"""The one error type for user-facing failures.

A `UserError` is a mistake the user can fix (a bad input, an impossible request). Its message
names the input and the fix; the CLI prints it as a short panel on stderr and exits with code 2,
the wizard shows it in a modal. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure caused by input the user can change.

    `title` names what was wrong ("Dataset", "Preset", ...); `fix` says what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, *, title: str = "Error", fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.title = title
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}\nFix: {self.fix}"
        return self.message
