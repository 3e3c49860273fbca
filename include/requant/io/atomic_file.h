#pragma once
#include <string>
#include <string_view>

// Files that are either the old bytes or all of the new ones, never a part: a full disk or an
// I/O error while writing leaves the previous file as it was. Every failure throws IoError
// naming the file and the system's reason ("No space left on device").

namespace rq::io {

// Writes `bytes` to a temporary beside `path` (PATH.tmp.PID), checks every write, fsyncs it,
// renames it over `path` and fsyncs the folder; on any failure the temporary is removed.
void write_file_atomic(const std::string& path, std::string_view bytes);
// fsync of a written file: write errors that the file system reports late (NFS, a full disk)
// surface here, as IoError.
void fsync_file(const std::string& path);
// fsync of a folder after a rename into it; best effort (some file systems refuse it).
void fsync_dir(const std::string& dir) noexcept;

}  // namespace rq::io
