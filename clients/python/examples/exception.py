#!/usr/bin/env python3
"""A job that raises: job() raises ppgate.JobError with the remote type, message and traceback.
(pp returned None and printed the traceback.)"""

import ppgate as pp


def divide(a, b):
    return a / b


job_server = pp.Server()
print("6/3 =", job_server.submit(divide, (6, 3))())
try:
    job_server.submit(divide, (1, 0))()
except pp.JobError as e:
    print("the job raised", e.type + ":", e.message)
    print(e.traceback.rstrip().splitlines()[-1])
job_server.destroy()
