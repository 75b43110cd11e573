import Foundation

/// One member of a tar stream as pg_basebackup writes it (ustar headers, PostgreSQL's
/// `tarCreateHeader`): the header parsed once, by the one parser the capture's `TarScanner`, the
/// base backup index and the parallel extraction share.
struct TarMember: Codable, Equatable, Sendable {
    enum Kind: String, Codable, Sendable {
        case file, directory, symlink
        /// Anything pg_basebackup never writes (hard links, devices, pax or GNU long-name headers):
        /// its data is skipped; a backup holding one is extracted by `tar -x` (no index is written).
        case other
    }

    /// The path inside the archive: no leading `./`, no trailing `/` (PostgreSQL ends directory and
    /// symlink names with one).
    var name: String
    var kind: Kind
    var mode: UInt32
    var uid, gid: UInt32
    /// Owner names (`postgres`): `tar -x` run as root gives files to these users when they exist.
    var userName, groupName: String
    /// Bytes of data following the header (0 for directories and symlinks).
    var size: UInt64
    var modificationTime: Int64
    var linkTarget: String

    static let blockSize: UInt64 = 512

    /// Parses one 512-byte header block.
    ///
    /// - Returns: nil for an end-of-archive (all-zero) block.
    /// - Throws: `TarFormatError` when the header's checksum does not match its bytes.
    init?(header: UnsafeRawBufferPointer) throws {
        guard header.count == 512 else { throw TarFormatError(message: "tar header of \(header.count) bytes") }
        guard header.contains(where: { $0 != 0 }) else { return nil }
        // The checksum counts its own field as spaces; unsigned sums (POSIX), signed accepted as tar does.
        var unsigned = 0, signed = 0
        for index in 0..<512 {
            let byte = (148..<156).contains(index) ? 32 : header[index]
            unsigned += Int(byte)
            signed += Int(Int8(bitPattern: byte))
        }
        let stored = Self.number(header, 148, 8)
        guard stored == UInt64(unsigned) || Int(truncatingIfNeeded: stored) == signed else {
            throw TarFormatError(message: "tar header checksum does not match (damaged stream)")
        }
        var name = Self.text(header, 0, 100)
        // POSIX ustar (PostgreSQL's own headers) has a name prefix field; old GNU headers ("ustar  ") do not.
        if Self.text(header, 257, 6) == "ustar" && header[262] == 0 {
            let prefix = Self.text(header, 345, 155)
            if !prefix.isEmpty { name = prefix + "/" + name }
        }
        while name.hasPrefix("./") { name.removeFirst(2) }
        while name.count > 1 && name.hasSuffix("/") { name.removeLast() }
        if name.isEmpty { name = "." }   // `./`: the directory extracted into
        self.name = name
        switch header[156] {
        case UInt8(ascii: "0"), 0, UInt8(ascii: "7"): kind = .file
        case UInt8(ascii: "5"): kind = .directory
        case UInt8(ascii: "2"): kind = .symlink
        default: kind = .other
        }
        mode = UInt32(truncatingIfNeeded: Self.number(header, 100, 8)) & 0o7777
        uid = UInt32(truncatingIfNeeded: Self.number(header, 108, 8))
        gid = UInt32(truncatingIfNeeded: Self.number(header, 116, 8))
        size = kind == .directory || kind == .symlink ? 0 : Self.number(header, 124, 12)
        guard size < 1 << 56 else { throw TarFormatError(message: "tar header of \(name) gives a size of \(size) bytes") }
        modificationTime = Int64(truncatingIfNeeded: Self.number(header, 136, 12))
        linkTarget = Self.text(header, 157, 100)
        userName = Self.text(header, 265, 32)
        groupName = Self.text(header, 297, 32)
    }

    /// A relative path that stays inside the directory it is extracted into (no `..`, not absolute),
    /// as `tar -x` insists by default, and a name (and link target) in UTF-8: one that is not was read
    /// with U+FFFD in place of its bytes and would be written under another name (`tar -x` keeps the
    /// bytes; such a stream gets no index and is extracted by it).
    var hasSafePath: Bool {
        !name.isEmpty && !name.hasPrefix("/") && !name.split(separator: "/").contains("..")
            && !name.contains("\u{FFFD}") && !linkTarget.contains("\u{FFFD}")
    }

    /// Header plus data plus the padding to the next 512-byte block.
    var recordBytes: UInt64 { Self.blockSize + (size + Self.blockSize - 1) / Self.blockSize * Self.blockSize }

    /// A NUL-terminated text field.
    private static func text(_ header: UnsafeRawBufferPointer, _ start: Int, _ length: Int) -> String {
        String(decoding: header[start..<(start + length)].prefix { $0 != 0 }, as: UTF8.self)
    }

    /// An octal field, or base-256 (high bit of the first byte set) as PostgreSQL writes large values.
    private static func number(_ header: UnsafeRawBufferPointer, _ start: Int, _ length: Int) -> UInt64 {
        if header[start] & 0x80 != 0 {
            return header[(start + 1)..<(start + length)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        var value: UInt64 = 0
        for byte in header[start..<(start + length)] {
            if byte == 0 || byte == 32 { if value == 0 { continue } else { break } }
            guard (48...55).contains(byte) else { break }
            value = value << 3 | UInt64(byte - 48)
        }
        return value
    }
}

struct TarFormatError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// Where a tar stream stands at one of its offsets, for a reader that starts there: the header
/// block the offset falls in or after. The base backup index keeps one per access point; an offset
/// at the start of a header needs none.
struct TarPosition: Codable, Equatable, Sendable {
    /// Offset of the header of the member (or of the end-of-archive block) the offset lies in.
    var headerOffset: UInt64
    /// That member; nil for an end-of-archive block.
    var member: TarMember?
}

/// Walks a tar stream as its bytes go by, from its start or from any offset whose `TarPosition`
/// is known: headers are parsed, data is handed out with its member and offset, padding skipped.
/// Never buffers more than one header.
struct TarWalker {
    enum Event {
        /// A member's header is complete (its data follows).
        case member(TarMember, headerOffset: UInt64)
        /// An end-of-archive (all-zero) block.
        case endBlock(headerOffset: UInt64)
        /// Bytes of a member's data, at `offset` within it.
        case data(TarMember, offset: UInt64, bytes: UnsafeRawBufferPointer)
    }

    /// Stream offset of the next byte.
    private(set) var offset: UInt64
    private var header: [UInt8] = []
    private var headerStart: UInt64
    /// Started inside a header whose member is known: skip the rest of it, then begin that member.
    private var skipping: UInt64 = 0
    private var pending: TarPosition?
    private var member: TarMember?
    private var dataOffset: UInt64 = 0
    private var remaining: UInt64 = 0
    private var padding: UInt64 = 0

    /// - Parameters:
    ///   - offset: where the bytes fed start in the stream.
    ///   - position: the stream's state there (nil: a header starts there).
    init(at offset: UInt64 = 0, position: TarPosition? = nil) {
        self.offset = offset
        headerStart = offset
        header.reserveCapacity(512)
        guard let position, position.headerOffset < offset else { return }
        let dataStart = position.headerOffset + TarMember.blockSize
        if offset < dataStart {
            skipping = dataStart - offset
            pending = position
        } else if let member = position.member {
            self.member = member
            dataOffset = offset - dataStart
            remaining = member.size > dataOffset ? member.size - dataOffset : 0
            padding = position.headerOffset + member.recordBytes - offset - remaining
        }
    }

    /// Whether the walk stopped in the middle of a member's header or data (the stream was cut there).
    var insideMember: Bool { !header.isEmpty || skipping > 0 || remaining > 0 || padding > 0 }

    mutating func feed(_ bytes: UnsafeRawBufferPointer, _ handle: (Event) throws -> Void) throws {
        var index = 0
        while index < bytes.count {
            let available = UInt64(bytes.count - index)
            if skipping > 0 {
                let take = Int(min(skipping, available))
                skipping -= UInt64(take)
                advance(&index, by: take)
                if skipping == 0, let pending {
                    self.pending = nil
                    if let member = pending.member { try begin(member, at: pending.headerOffset, handle) } else { try handle(.endBlock(headerOffset: pending.headerOffset)) }
                }
            } else if remaining > 0, let member {
                let take = Int(min(remaining, available))
                try handle(.data(member, offset: dataOffset, bytes: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)])))
                dataOffset += UInt64(take)
                remaining -= UInt64(take)
                advance(&index, by: take)
            } else if padding > 0 {
                let take = Int(min(padding, available))
                padding -= UInt64(take)
                advance(&index, by: take)
            } else {
                if header.isEmpty { headerStart = offset }
                let take = min(512 - header.count, bytes.count - index)
                header.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                advance(&index, by: take)
                if header.count == 512 {
                    defer { header.removeAll(keepingCapacity: true) }
                    let parsed = try header.withUnsafeBytes { try TarMember(header: $0) }
                    if let parsed { try begin(parsed, at: headerStart, handle) } else { try handle(.endBlock(headerOffset: headerStart)) }
                }
            }
        }
    }

    private mutating func advance(_ index: inout Int, by count: Int) {
        index += count
        offset += UInt64(count)
    }

    private mutating func begin(_ member: TarMember, at headerOffset: UInt64, _ handle: (Event) throws -> Void) throws {
        self.member = member
        dataOffset = 0
        remaining = member.size
        padding = member.recordBytes - TarMember.blockSize - member.size
        try handle(.member(member, headerOffset: headerOffset))
    }
}
