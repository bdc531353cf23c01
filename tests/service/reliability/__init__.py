"""The service under overload, hostile input and faults (what is tested, and why, is in
docs/reliability.md): in-process apps over the service fixtures, and real ``verydeep serve``
subprocesses (``tests.service.helpers.server_for``, the server under test of ``bench/server.py``).
"""
