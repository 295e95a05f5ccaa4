"""Where a base image comes from, one module per recipe source kind."""
