"""rich's Table for the SDK's table views, which a client-only install does not have."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table


def table_class(view: str, *, instead: str = "") -> type[Table]:
    """``rich.table.Table``, or an ImportError naming the extra that installs rich.

    ``view`` names the method that needs it; ``instead`` suggests what works without.
    """
    try:
        from rich.table import Table
    except ImportError as error:
        alternative = f", or use {instead}" if instead else ""
        raise ImportError(
            f"{view} needs rich, which is not installed: pip install 'sandbox-sdk[cli]'"
            f"{alternative}"
        ) from error
    return Table
