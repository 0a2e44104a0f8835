"""Pools of replicas behind one ``submit()``: :class:`AdapterHost` (``host``) binds the
parts, each with one job: a replica's state and its changes (``replica``), where a task
goes and the waiting line (``placement``), where prompts' beginnings were evaluated
(``prefixes``), the retry policy (``retry``), how a replica is watched (``watcher``), a
task's attempts (``stream``) and the metrics (``metrics``).
"""
