#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

// A read-only memory map of one whole file. Pages are touched only when read, so mapping a
// multi-gigabyte checkpoint costs nothing until a tensor is materialised.

namespace rq::io {

class MappedFile {
  public:
    // Throws IoError naming the path when the file cannot be opened, stat'ed or mapped.
    explicit MappedFile(std::string path);
    ~MappedFile();
    MappedFile(const MappedFile&)            = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const std::uint8_t* data() const { return data_; }
    std::size_t         size() const { return size_; }
    const std::string&  path() const { return path_; }
    // Drops the pages of [offset, offset+len) from this process's resident set (they are clean
    // file pages; a later read faults them back in). Used after a tensor has been copied out,
    // so a rank's memory holds its tensors once, not twice.
    void release(std::size_t offset, std::size_t len) const;

  private:
    std::string         path_;
    const std::uint8_t* data_ = nullptr;
    std::size_t         size_ = 0;
};

// The last component of a path, for error messages ("model-00002-of-00004.safetensors").
std::string base_name(const std::string& path);

}  // namespace rq::io
