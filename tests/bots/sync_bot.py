"""bot() must be async; this one is not."""


def bot(args):
    pass
