/* mqttsrc.c -- placeholder until the module lands. */
