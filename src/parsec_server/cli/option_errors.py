"""Usage errors about an option, raised by validation code that click does not call itself."""

from __future__ import annotations

import click


def option_error(name: str, message: str) -> click.BadParameter:
    """`Invalid value for <option>: <message>` about the parameter called `name`, hinted as
    click hints its own errors when a click command is running, else as `'--<name>'`."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        for param in ctx.command.params:
            if param.name == name:
                return click.BadParameter(message, ctx=ctx, param=param)
    return click.BadParameter(message, ctx=ctx, param_hint=f"'--{name.replace('_', '-')}'")
