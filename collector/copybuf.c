/* copybuf.c -- placeholder until the module lands. */
