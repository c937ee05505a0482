/* simulate.c -- placeholder until the module lands. */
