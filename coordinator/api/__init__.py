"""What the coordinator serves over HTTP: the OpenAI-style API and its schema, the worker
WebSocket endpoint, the dashboard, /metrics, static files and the access middleware.
Thin I/O over the engine and the swarm; decisions live there.
"""
