"""A module that forgot to define bot()."""


async def main(args):
    pass
