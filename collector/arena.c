/* arena.c -- placeholder until the module lands. */
