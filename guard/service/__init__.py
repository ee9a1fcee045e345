"""The guard at work: the scan cycle, the daemon that schedules it, and ``doctor``.

Owns one scan of an account (folder sync, judging, thread updates, labels, drafts, dry
runs), the long-running daemon (schedule, IDLE, retries and backoff) and the health
checks. This is the layer that puts mailbox, policy, store and reports together.

May import every part of ``guard`` except ``guard.cli``.
"""
