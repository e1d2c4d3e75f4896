# Config versions live here, as in Co-op Cloud recipes: bump when index.html changes
# (swarm configs are immutable, so new content needs a new name).
export INDEX_VERSION=v2

# abra runs commands defined here; ccci only reads the exports above, it never runs this file.
abra_backup_app() {
  export INDEX_VERSION=not-this-one
  echo "backing up"
}
