"""Fault tests: the whole stack (private Postfix, mxhook-milter, mxhook-spooler, a loopback
receiver) under kill -9, receiver errors and timeouts (test_fault_suite.py), and a spool on a
file system that fills up (test_disk_full.py). They run in `make test`, bounded in time."""
