import Crypto
import Foundation

/// Encryption at rest: AES-256-GCM over the compressed stream, in authenticated frames.
///
/// Layout: magic `DBRCENC1`, then frames of `[u32 ciphertext length][12-byte nonce][ciphertext]
/// [16-byte tag]`. Each frame's additional data binds the object it belongs to, its index and
/// whether it is the last, so truncation, reordering, and frames moved between files are all
/// detected. The key never enters the repository; manifests record only its fingerprint.
// @unchecked Sendable: `SymmetricKey` is an immutable value (never mutated after init); swift-crypto 3.12 does not mark it Sendable.
public struct RepositoryKey: @unchecked Sendable {
    let key: SymmetricKey
    /// A short, non-reversible identifier of the key, recorded in manifests.
    public let fingerprint: String

    public static let magic = Array("DBRCENC1".utf8)

    /// Derives the key from its material (a key file's contents or `DBRECOVERY_ENCRYPTION_KEY`).
    ///
    /// - Throws: `RecoveryError(.configuration)` for material shorter than 16 bytes.
    public init(material: Data) throws {
        let trimmed = Data(String(decoding: material, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        guard trimmed.count >= 16 else {
            throw RecoveryError(.configuration, "the encryption key is shorter than 16 bytes",
                                hint: "generate one with: head -c 32 /dev/urandom | base64 > /etc/dbrecovery/repository.key")
        }
        key = HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: trimmed), info: Data("dbrecovery repository cipher v1".utf8),
                                     outputByteCount: 32)
        let id = HMAC<SHA256>.authenticationCode(for: Data("dbrecovery key id".utf8), using: key)
        fingerprint = Data(id).prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// The key from `--encryption-key-file`, else `DBRECOVERY_ENCRYPTION_KEY`, else none.
    public static func load(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> RepositoryKey? {
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw RecoveryError(.configuration, "encryption key file \(file) cannot be read", hint: "check --encryption-key-file and its permissions (0600)")
            }
            return try RepositoryKey(material: data)
        }
        if let text = environment["DBRECOVERY_ENCRYPTION_KEY"], !text.isEmpty { return try RepositoryKey(material: Data(text.utf8)) }
        return nil
    }

    /// Seals one small value (not a stream): AES-256-GCM, bound to `object` as additional data.
    func seal(_ plaintext: Data, object: String) throws -> Data {
        guard let combined = try AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(), authenticating: Data(object.utf8)).combined else {
            throw RecoveryError(.failure, "AES-GCM produced no sealed box", hint: "report this as a bug")
        }
        return combined
    }

    /// Opens what `seal(_:object:)` sealed for the same object.
    ///
    /// - Throws: `RecoveryError(.backupCorrupt)` when the value fails authentication (altered, or moved
    ///   from another object); callers check the key's fingerprint first.
    func open(_ sealed: Data, object: String) throws -> Data {
        do {
            return try AES.GCM.open(AES.GCM.SealedBox(combined: sealed), using: key, authenticating: Data(object.utf8))
        } catch {
            throw RecoveryError(.backupCorrupt, "\(object) fails authentication: it was altered, or sealed for another object",
                                hint: "restore another backup")
        }
    }

    func additionalData(object: String, index: UInt64, last: Bool) -> Data {
        var data = Data(object.utf8)
        withUnsafeBytes(of: index.bigEndian) { data.append(contentsOf: $0) }
        data.append(last ? 1 : 0)
        return data
    }
}

/// Push-based encryptor: plaintext in, framed ciphertext to `sink`.
final class StreamEncryptor {
    private let key: RepositoryKey
    private let object: String
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private var buffer = Data()
    private var index: UInt64 = 0
    static let frameSize = 1 << 20

    init(key: RepositoryKey, object: String, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        self.key = key
        self.object = object
        self.sink = sink
        try RepositoryKey.magic.withUnsafeBytes { try sink($0) }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        buffer.append(contentsOf: bytes)
        while buffer.count >= Self.frameSize {
            try seal(buffer.prefix(Self.frameSize), last: false)
            buffer.removeFirst(Self.frameSize)
        }
    }

    func finish() throws {
        try seal(buffer, last: true)
        buffer = Data()
    }

    private func seal(_ plaintext: Data, last: Bool) throws {
        let box = try AES.GCM.seal(plaintext, using: key.key, nonce: AES.GCM.Nonce(),
                                   authenticating: key.additionalData(object: object, index: index, last: last))
        index += 1
        var frame = Data()
        withUnsafeBytes(of: UInt32(box.ciphertext.count).bigEndian) { frame.append(contentsOf: $0) }
        frame.append(contentsOf: box.nonce)
        frame.append(box.ciphertext)
        frame.append(box.tag)
        try frame.withUnsafeBytes { try sink($0) }
    }
}

/// Push-based decryptor: framed ciphertext in, plaintext to `sink`; `finish()` demands the last frame.
final class StreamDecryptor {
    private let key: RepositoryKey
    private let object: String
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private var buffer = Data()
    private var index: UInt64 = 0
    private var sawMagic = false
    private var sawLast = false

    init(key: RepositoryKey, object: String, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.key = key
        self.object = object
        self.sink = sink
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        buffer.append(contentsOf: bytes)
        if !sawMagic {
            guard buffer.count >= RepositoryKey.magic.count else { return }
            guard Array(buffer.prefix(RepositoryKey.magic.count)) == RepositoryKey.magic else { throw damaged("not an encrypted dbrecovery file") }
            buffer.removeFirst(RepositoryKey.magic.count)
            sawMagic = true
        }
        while buffer.count >= 4 {
            let length = Int(buffer.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            // A damaged header could declare up to 4 GiB: refuse it rather than buffer towards it.
            guard length <= StreamEncryptor.frameSize else {
                throw damaged("frame \(index) declares \(length) bytes, more than the \(StreamEncryptor.frameSize)-byte frame size")
            }
            let frameLength = 4 + 12 + length + 16
            guard buffer.count >= frameLength else { return }
            guard !sawLast else { throw damaged("data after the last frame") }
            let frame = buffer.prefix(frameLength)
            buffer.removeFirst(frameLength)
            let start = frame.startIndex
            let nonce = try AES.GCM.Nonce(data: frame[(start + 4)..<(start + 16)])
            let ciphertext = frame[(start + 16)..<(start + 16 + length)]
            let tag = frame[(start + 16 + length)...]
            let plaintext: Data
            var opened: Data?
            for last in [false, true] {
                if let box = try? AES.GCM.SealedBox(nonce: nonce, ciphertext: ciphertext, tag: tag),
                   let text = try? AES.GCM.open(box, using: key.key, authenticating: key.additionalData(object: object, index: index, last: last)) {
                    opened = text
                    sawLast = last
                    break
                }
            }
            guard let text = opened else { throw damaged("frame \(index) fails authentication (tampered, reordered, or another key)") }
            plaintext = text
            index += 1
            try plaintext.withUnsafeBytes { try sink($0) }
        }
    }

    func finish() throws {
        guard sawMagic, sawLast, buffer.isEmpty else { throw damaged("the encrypted stream is truncated") }
    }

    private func damaged(_ reason: String) -> RecoveryError {
        RecoveryError(.backupCorrupt, "\(object): \(reason)", hint: "nothing was applied from it; restore another backup")
    }
}
