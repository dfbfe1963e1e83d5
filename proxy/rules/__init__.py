"""Pure protocol rules: keys, ranges, conditions, tus headers, response heads. No I/O."""
