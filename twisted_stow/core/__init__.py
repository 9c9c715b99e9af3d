"""The pure core: bytes in, events and outcomes out, response bytes back.

Nothing in this package imports Twisted, Klein, treq or zope
(tests/unit/test_core_is_pure.py checks every module in it): the parser,
media types, the DICOM header capture and validation, outcomes, response
building, errors, UIDs, deadlines, policy values and the configuration.
"""
