"""twistd plugin: ``twistd -n stow --help``.

The module is named as a string so that ``twistd --help`` does not import the
application.  This file is installed into ``twisted/plugins`` by setup.py.
"""

from twisted.application.service import ServiceMaker

stow = ServiceMaker(
    "twisted-stow",
    "twisted_stow.tap",
    "DICOMweb STOW-RS streaming server",
    "stow",
)
