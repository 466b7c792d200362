"""
Policy plugins (L{ahoyconference.interfaces.IPolicyPlugin}) are found here by
C{twisted.plugin.getPlugins}: the modules of this package, and of every
C{ahoyconference/plugins} directory on C{sys.path} (so an operator drops a file
into such a directory on C{PYTHONPATH}; no C{__init__.py} is needed there).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
