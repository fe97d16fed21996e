"""Generation: a request's state (sequence, session, step), the scheduler, a stage's hop
plan, the router and head pruning, drafting and acceptance, replay records and the stage
rebuild, and the engine that runs schedule -> execute -> update. Only the engine's execute
step does I/O (through the swarm's worker links).
"""
