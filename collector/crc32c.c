/* crc32c.c -- placeholder until the module lands. */
