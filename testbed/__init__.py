"""The local test bed's Python side: fixture recipes as real git repositories."""
