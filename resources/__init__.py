"""Files the application loads at run time (icons, the .desktop entry).

Shipped as the package ``desktop_agent.resources``; read them with
:func:`desktop_agent.ui.resources.resource_bytes`, never by path.
"""
