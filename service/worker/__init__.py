"""Workers: claim jobs, run each training in a child process, heartbeat, finish or release."""
