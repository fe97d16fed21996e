"""Who may use and join the coordinator (access configuration and decisions, TLS) and whether
a tab tells the truth (the stage checker and the spot-checks that drive it).
"""
