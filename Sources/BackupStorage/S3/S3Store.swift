import Crypto
import Foundation
import UTCTime
#if canImport(Glibc)
import Glibc
#endif

/// A repository under an S3 prefix, with the same key layout as on disk.
///
/// Large objects are uploaded with multipart upload (`S3MultipartWriter`: parts of `partSize`
/// growing as they accumulate, a bounded number in flight and in memory) and read back with ranged
/// GETs of one part each, so memory never grows with the object. Nothing is visible under a key
/// until its upload completes.
public final class S3Store: BackupStore {
    let client: S3Client
    /// Key prefix inside the bucket, without leading or trailing slash (may be empty).
    public let prefix: String
    /// Keys per ListObjectsV2 page (S3's maximum is 1000; tests use less to exercise continuation).
    var listPageSize = 1000

    public var location: String { prefix.isEmpty ? "s3://\(client.configuration.bucket)" : "s3://\(client.configuration.bucket)/\(prefix)" }
    public var features: StoreFeatures { [.storageClasses] }

    public let reads = RepositoryReads()

    public init(configuration: S3Configuration, prefix: String) {
        client = S3Client(configuration)
        self.prefix = prefix
    }

    func fullKey(_ key: String) -> String { prefix.isEmpty ? key : "\(prefix)/\(key)" }

    private func relativeKey(_ full: String) -> String {
        prefix.isEmpty ? full : String(full.dropFirst(prefix.count + 1))
    }

    private var sseHeaders: [String: String] {
        var headers: [String: String] = [:]
        if let sse = client.configuration.serverSideEncryption { headers["x-amz-server-side-encryption"] = sse }
        if let key = client.configuration.kmsKeyID { headers["x-amz-server-side-encryption-aws-kms-key-id"] = key }
        return headers
    }

    // MARK: - BackupStore

    public func list(prefix listPrefix: String) throws -> [StoredObject] {
        var objects: [StoredObject] = []
        var token: String?
        repeat {
            // encoding-type=url: a key with a character XML 1.0 cannot hold (a control character) comes
            // percent-encoded instead of making the whole page unreadable.
            var query = [("list-type", "2"), ("prefix", fullKey(listPrefix)), ("max-keys", String(listPageSize)), ("encoding-type", "url")]
            if let token { query.append(("continuation-token", token)) }
            let response = try client.send("GET", key: nil, query: query, interruptible: true)
            guard let document = XMLNode.parse(response.body) else {
                throw StorageError(.remote, object: location, message: "ListObjectsV2 answered with unreadable XML")
            }
            for item in document.all("Contents") {
                guard let key = item.value("Key").map({ Self.decodedKey($0, in: document) }) else { continue }
                let modified = item.value("LastModified").flatMap { Timestamp.parse($0) }
                // A size read as 0 would make a whole object look truncated: an entry without one is trouble.
                guard let size = item.value("Size").flatMap({ UInt64($0.trimmingCharacters(in: .whitespaces)) }) else {
                    throw StorageError(.remote, object: client.describe(key), message: "ListObjectsV2 answered without a readable Size for this object",
                                       hint: Self.unreadableAnswerHint)
                }
                objects.append(StoredObject(key: relativeKey(key), size: size, modified: modified, storageClass: item.value("StorageClass")))
            }
            token = nil
            if document.value("IsTruncated") == "true" {
                // Stopping here would drop the rest of the listing without a word (a backup unseen, WAL "missing").
                guard let next = document.value("NextContinuationToken"), !next.isEmpty else {
                    throw StorageError(.remote, object: location, message: "ListObjectsV2 answered a truncated page without a NextContinuationToken",
                                       hint: Self.unreadableAnswerHint)
                }
                token = next
            }
        } while token != nil
        return objects.sorted { $0.key < $1.key }
    }

    public func read(_ key: String) throws -> Data {
        try client.send("GET", key: fullKey(key), interruptible: true).body
    }

    public func write(_ key: String, contents: Data) throws {
        var headers = sseHeaders
        headers["content-type"] = "application/octet-stream"
        _ = try client.send("PUT", key: fullKey(key), headers: headers, body: contents, interruptible: true)
    }

    public func makeWriter(_ key: String) throws -> ObjectWriter {
        S3MultipartWriter(store: self, key: fullKey(key), extraHeaders: sseHeaders,
                          schedule: S3PartSchedule(base: client.configuration.partSize, partsPerStep: partsPerStep, partLimit: partLimit),
                          grownInFlightBudget: grownInFlightBudget)
    }

    /// Parts uploaded at each part size before it doubles (`S3PartSchedule`; tests lower it to cross a step).
    var partsPerStep = S3PartSchedule.defaultPartsPerStep
    /// Parts one upload may have (S3's 10,000; tests lower it to reach the limit).
    var partLimit = S3PartSchedule.maximumParts
    /// Bytes of grown parts in flight (`S3MultipartWriter.grownInFlightBudget`; tests lower it to see the bound at small sizes).
    var grownInFlightBudget = S3MultipartWriter.grownInFlightBudget

    public func makeReader(_ key: String) throws -> ObjectReader {
        try makeReader(key, range: nil)
    }

    public func makeReader(_ key: String, range: Range<UInt64>) throws -> ObjectReader {
        try makeReader(key, range: Optional(range))
    }

    private func makeReader(_ key: String, range: Range<UInt64>?) throws -> ObjectReader {
        let size = try objectInfo(key).size
        guard let range else { return S3RangeReader(client: client, key: fullKey(key), size: size, chunkSize: client.configuration.partSize, reads: reads) }
        guard range.upperBound <= size else {
            throw StorageError(.remote, object: client.describe(fullKey(key)), message: "object has \(size) bytes, fewer than the range \(range.lowerBound)-\(range.upperBound) read from it (truncated)")
        }
        return S3RangeReader(client: client, key: fullKey(key), size: range.upperBound, chunkSize: client.configuration.partSize,
                             reads: reads, offset: range.lowerBound)
    }

    /// One HEAD request: the size, and whether the object can be read without a restore request.
    public func objectInfo(_ key: String) throws -> StoredObject {
        let head = try client.send("HEAD", key: fullKey(key), acceptable: [404], interruptible: true)
        guard head.status != 404 else {
            throw StorageError(.notFound, object: client.describe(fullKey(key)), message: "no such object")
        }
        let storageClass = head.header("x-amz-storage-class")
        if let storageClass, ["GLACIER", "DEEP_ARCHIVE"].contains(storageClass),
           !(head.header("x-amz-restore")?.contains("ongoing-request=\"false\"") ?? false) {
            throw StorageError(.archived, object: client.describe(fullKey(key)), message: "archived: needs a restore request (storage class \(storageClass))",
                               hint: S3Client.hint(for: "InvalidObjectState", key: fullKey(key), bucket: client.configuration.bucket))
        }
        return StoredObject(key: key, size: try contentLength(of: head, key: fullKey(key)), modified: nil, storageClass: storageClass)
    }

    /// The size a HEAD answered. Without a readable Content-Length (a proxy or gateway that drops it)
    /// the size is unknown, never 0: a 0 would make a whole object look truncated and a restore pass
    /// over the newest backup for an older one. Unknown is repository trouble, like a 503.
    private func contentLength(of head: S3Response, key full: String) throws -> UInt64 {
        let text = head.header("Content-Length")
        guard let size = text.flatMap({ UInt64($0.trimmingCharacters(in: .whitespaces)) }) else {
            throw StorageError(.remote, object: client.describe(full),
                               message: "HEAD answered without a readable Content-Length (\(text.map { "'\($0)'" } ?? "none")), so the object's size is unknown",
                               hint: Self.unreadableAnswerHint)
        }
        return size
    }

    /// What to check when S3 (or what stands in front of it) answers without a field every S3 answer has.
    static let unreadableAnswerHint = "check the endpoint and any proxy or gateway in between (it must pass S3's answers through unchanged); nothing was changed"

    /// A key (or marker) of a listing asked with `encoding-type=url`: percent-escapes decoded, `+` a
    /// space, as S3 encodes them (and botocore decodes them). Only when the answer says it encoded
    /// them (`<EncodingType>url</EncodingType>`): a server that ignores the parameter sends keys as
    /// they are, and decoding those would turn a `+` or `%` in a key into another key.
    static func decodedKey(_ text: String, in document: XMLNode) -> String {
        guard document.value("EncodingType") == "url" else { return text }
        return text.replacingOccurrences(of: "+", with: " ").removingPercentEscapes()
    }

    public func delete(_ keys: [String]) throws {
        var batch: [String] = []
        for key in keys {
            // XML 1.0 cannot carry a control character (and a parser reads CR as LF): DeleteObjects would
            // be refused as malformed, every time. Such a key (a stray object: ours have none) is deleted
            // by itself, in its place in the order.
            if key.unicodeScalars.contains(where: { $0.value < 0x20 }) {
                try deleteBatch(batch)
                batch = []
                _ = try client.send("DELETE", key: fullKey(key), acceptable: [404])
            } else {
                batch.append(key)
                if batch.count == 1000 {
                    try deleteBatch(batch)
                    batch = []
                }
            }
        }
        try deleteBatch(batch)
    }

    /// One DeleteObjects request (at most 1,000 keys, none with a control character).
    private func deleteBatch(_ batch: [String]) throws {
        guard !batch.isEmpty else { return }
        let body = Data(("<Delete><Quiet>true</Quiet>" + batch.map { "<Object><Key>\(xmlEscape(fullKey($0)))</Key></Object>" }.joined()
                         + "</Delete>").utf8)
        let response = try client.send("POST", key: nil, query: [("delete", "")],
                                       headers: ["content-type": "application/xml", "content-md5": contentMD5(body)], body: body)
        guard let result = XMLNode.parse(response.body) else {
            // Quiet mode lists only the keys that failed: an answer we cannot read may hide them.
            throw StorageError(.remote, object: location, message: "DeleteObjects answered with unreadable XML, so whether every key was deleted is unknown",
                               hint: Self.unreadableAnswerHint)
        }
        if let failure = result.all("Error").first {
            throw StorageError(.remote, object: client.describe(failure.value("Key") ?? ""),
                               message: "delete failed: \(failure.value("Code") ?? "") \(failure.value("Message") ?? "")")
        }
    }

    /// Above this size CopyObject is refused by S3 (5 GiB): the storage class changes with a
    /// multipart copy instead (tests lower it).
    var copyObjectLimit: UInt64 = 5 * 1024 * 1024 * 1024
    /// Bytes per UploadPartCopy request of a multipart copy.
    var copyPartSize: UInt64 = 512 * 1024 * 1024

    public func changeStorageClass(_ key: String, to storageClass: String) throws {
        let full = fullKey(key)
        let head = try client.send("HEAD", key: full, acceptable: [404], interruptible: true)
        guard head.status != 404 else { throw StorageError(.notFound, object: client.describe(full), message: "no such object") }
        if head.header("x-amz-storage-class") == storageClass { return }
        let size = try contentLength(of: head, key: full)
        if size > copyObjectLimit { return try multipartCopy(full, size: size, to: storageClass) }
        var headers = sseHeaders
        headers["x-amz-copy-source"] = "/\(client.configuration.bucket)/\(SigV4Signer.encode(full, keepSlash: true))"
        headers["x-amz-storage-class"] = storageClass
        headers["x-amz-metadata-directive"] = "COPY"
        do {
            _ = try client.send("PUT", key: full, headers: headers, interruptible: true)
        } catch let error as StorageError {
            // A retried copy whose first attempt already took effect finds the source archived: check.
            let head = try client.send("HEAD", key: full, acceptable: [404])
            guard head.header("x-amz-storage-class") == storageClass else { throw error }
        }
    }

    public func create(_ key: String, contents: Data) throws -> Bool {
        try create(key, contents: contents, md5: Insecure.MD5.hash(data: contents))
    }

    public func holds(_ key: String, contents: Data) -> Bool {
        holds(key, contents: contents, md5: Insecure.MD5.hash(data: contents))
    }

    public func createConfirmed(_ key: String, contents: Data) throws -> Bool {
        let md5 = Insecure.MD5.hash(data: contents)
        return try create(key, contents: contents, md5: md5) && holds(key, contents: contents, md5: md5)
    }

    /// `create` with the MD5 of `contents` already computed.
    private func create(_ key: String, contents: Data, md5: Insecure.MD5Digest) throws -> Bool {
        var headers = sseHeaders
        headers["content-type"] = "application/octet-stream"
        headers["if-none-match"] = "*"
        // S3 refuses a body that arrived other than it was sent.
        headers["content-md5"] = Data(md5).base64EncodedString()
        // 409 ConditionalRequestConflict: another conditional write to the key is in flight; ask again.
        for _ in 0..<5 {
            let response = try client.send("PUT", key: fullKey(key), headers: headers, body: contents, acceptable: [409, 412], interruptible: true)
            if response.status == 412 { return false }
            if response.status != 409 { return true }
            Thread.sleep(forTimeInterval: Double.random(in: 0.05...0.2))
        }
        throw StorageError(.remote, object: client.describe(fullKey(key)), message: "conditional PUT kept conflicting with another writer",
                           hint: "another process is writing the same object; run again")
    }

    /// `holds` with the MD5 of `contents` already computed.
    private func holds(_ key: String, contents: Data, md5: Insecure.MD5Digest) -> Bool {
        guard let head = try? client.send("HEAD", key: fullKey(key), acceptable: [404], interruptible: false), head.status != 404 else { return false }
        // A single-part object's ETag is the MD5 of its bytes, unless SSE-KMS or SSE-C encrypted it;
        // then (as for a multipart ETag, "…-N") only reading it back can tell.
        let etag = (head.header("ETag") ?? "").trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        let kms = head.header("x-amz-server-side-encryption").map { $0 != "AES256" } ?? false
        // A HEAD without a readable Content-Length (a gateway dropping it) proves nothing either way: read.
        if etag.count == 32 && !kms && head.header("x-amz-server-side-encryption-customer-algorithm") == nil,
           let length = (try? contentLength(of: head, key: fullKey(key))) {
            return etag.lowercased() == md5Hex(md5) && length == UInt64(contents.count)
        }
        return (try? read(key)) == contents
    }

    public func readVersioned(_ key: String) throws -> VersionedObject {
        let response = try client.send("GET", key: fullKey(key), interruptible: false)
        guard let etag = response.header("ETag") else {
            throw StorageError(.remote, object: client.describe(fullKey(key)), message: "GET answered without an ETag",
                               hint: "the S3 endpoint does not support conditional requests, which repository locks need")
        }
        return VersionedObject(contents: response.body, version: etag)
    }

    public func delete(_ key: String, ifVersion version: String) throws -> Bool {
        // A retry after a lost reply finds the object gone (404): then it was this call that deleted it,
        // or its owner; either way it is not ours to report.
        let response = try client.send("DELETE", key: fullKey(key), headers: ["if-match": version], acceptable: [404, 412])
        return (200..<300).contains(response.status)
    }

    // MARK: - Lifecycle

    /// The bucket's lifecycle configuration as XML, or nil when it has none.
    /// Copies an object onto itself in another storage class with UploadPartCopy, for objects
    /// CopyObject cannot take; the upload is aborted (and a failed abort reported) on any failure.
    private func multipartCopy(_ full: String, size: UInt64, to storageClass: String) throws {
        var headers = sseHeaders
        headers["content-type"] = "application/octet-stream"
        headers["x-amz-storage-class"] = storageClass
        let created = try client.send("POST", key: full, query: [("uploads", "")], headers: headers, interruptible: true)
        guard let uploadID = XMLNode.parse(created.body)?.first("UploadId")?.text else {
            throw StorageError(.remote, object: client.describe(full), message: "CreateMultipartUpload returned no UploadId")
        }
        let source = "/\(client.configuration.bucket)/\(SigV4Signer.encode(full, keepSlash: true))"
        // At most S3's 10,000 parts: an object near S3's 5 TiB limit takes larger ranges.
        let partSize = max(copyPartSize, (size + UInt64(S3PartSchedule.maximumParts) - 1) / UInt64(S3PartSchedule.maximumParts))
        do {
            var parts: [String] = []
            var offset: UInt64 = 0
            while offset < size {
                let end = min(size, offset + partSize) - 1
                let number = parts.count + 1
                let response = try client.send("PUT", key: full, query: [("partNumber", String(number)), ("uploadId", uploadID)],
                                               headers: ["x-amz-copy-source": source, "x-amz-copy-source-range": "bytes=\(offset)-\(end)"], interruptible: true)
                guard let etag = XMLNode.parse(response.body)?.first("ETag")?.text else {
                    throw StorageError(.remote, object: client.describe(full), message: "UploadPartCopy of part \(number) returned no ETag")
                }
                parts.append("<Part><PartNumber>\(number)</PartNumber><ETag>\(xmlEscape(etag))</ETag></Part>")
                offset = end + 1
            }
            let body = Data(("<CompleteMultipartUpload>" + parts.joined() + "</CompleteMultipartUpload>").utf8)
            do {
                // (A 200 with an <Error> document inside is that error: S3Client.send throws it, or retries it.)
                _ = try client.send("POST", key: full, query: [("uploadId", uploadID)], headers: ["content-type": "application/xml"], body: body,
                                    interruptible: true)
            } catch let error as StorageError {
                // A retried Complete whose first attempt took effect may find the upload gone: check.
                guard try client.send("HEAD", key: full, acceptable: [404]).header("x-amz-storage-class") == storageClass else { throw error }
            }
        } catch {
            do {
                _ = try client.send("DELETE", key: full, query: [("uploadId", uploadID)], acceptable: [404])
            } catch let abortError {
                throw StorageError(.remote, object: client.describe(full),
                                   message: "storage class change failed (\(error)); its multipart upload could not be aborted (\(abortError))",
                                   hint: "the next dbbackup or dbprune on this repository aborts it")
            }
            throw error
        }
    }

    public func lifecycleConfiguration() throws -> String? {
        let response = try client.send("GET", key: nil, query: [("lifecycle", "")], acceptable: [404], interruptible: true)
        return response.status == 404 ? nil : String(decoding: response.body, as: UTF8.self)
    }

    /// Replaces the bucket's lifecycle configuration.
    public func putLifecycleConfiguration(_ xml: String) throws {
        let body = Data(xml.utf8)
        _ = try client.send("PUT", key: nil, query: [("lifecycle", "")],
                            headers: ["content-type": "application/xml", "content-md5": contentMD5(body)], body: body, interruptible: true)
    }

    /// Keys of the multipart uploads still open under this prefix (an interrupted upload shows here).
    public func openMultipartUploads() throws -> [String] {
        try multipartUploads().map(\.key)
    }

    /// One open multipart upload.
    struct OpenUpload {
        let key: String
        let uploadID: String
        let initiated: Date?
    }

    /// Every open multipart upload under this prefix (ListMultipartUploads, all pages).
    func multipartUploads() throws -> [OpenUpload] {
        var uploads: [OpenUpload] = []
        var markers: (key: String, upload: String)?
        repeat {
            var query = [("uploads", ""), ("prefix", prefix.isEmpty ? "" : prefix + "/"), ("encoding-type", "url")]
            if let markers { query += [("key-marker", markers.key), ("upload-id-marker", markers.upload)] }
            let response = try client.send("GET", key: nil, query: query, interruptible: true)
            guard let document = XMLNode.parse(response.body) else {
                throw StorageError(.remote, object: location, message: "ListMultipartUploads answered with unreadable XML")
            }
            for item in document.all("Upload") {
                guard let key = item.value("Key").map({ Self.decodedKey($0, in: document) }), let id = item.value("UploadId") else { continue }
                let initiated = item.value("Initiated").flatMap { Timestamp.parse($0) }
                uploads.append(OpenUpload(key: key, uploadID: id, initiated: initiated))
            }
            markers = nil
            if document.value("IsTruncated") == "true" {
                guard let key = document.value("NextKeyMarker"), let upload = document.value("NextUploadIdMarker") else {
                    throw StorageError(.remote, object: location, message: "ListMultipartUploads answered a truncated page without its next markers",
                                       hint: Self.unreadableAnswerHint)
                }
                markers = (Self.decodedKey(key, in: document), upload)
            }
        } while markers != nil
        return uploads
    }

    public func removeLeftovers(before cutoff: Date) throws -> [String] {
        var lines: [String] = []
        for upload in try multipartUploads() where (upload.initiated ?? .distantFuture) < cutoff {
            do {
                _ = try client.send("DELETE", key: upload.key, query: [("uploadId", upload.uploadID)], acceptable: [404])
                lines.append("aborted an open multipart upload of \(relativeKey(upload.key)) left by an interrupted run")
            } catch {
                lines.append("could not abort the open multipart upload of \(relativeKey(upload.key)): \(error)")
            }
        }
        return lines
    }
}

/// Reads an object with sequential ranged GETs, one chunk in memory at a time; each range is
/// retried on its own.
final class S3RangeReader: ObjectReader {
    private let client: S3Client
    private let key: String
    private let size: UInt64
    private let chunkSize: Int
    /// The store's counter, told every byte a GET returned.
    private let reads: RepositoryReads
    private var offset: UInt64 = 0
    private var chunk = Data()
    private var position = 0

    /// Reads `offset..<size` of the object (`size`: where to stop, the object's size for a whole read).
    init(client: S3Client, key: String, size: UInt64, chunkSize: Int, reads: RepositoryReads, offset: UInt64 = 0) {
        self.client = client
        self.key = key
        self.size = size
        self.chunkSize = chunkSize
        self.reads = reads
        self.offset = offset
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if position == chunk.count {
            guard offset < size else { return 0 }
            let end = min(size, offset + UInt64(chunkSize)) - 1
            // A short answer (a proxy or connection cutting it, headers and all) is retried inside send's loop.
            chunk = try client.send("GET", key: key, headers: ["range": "bytes=\(offset)-\(end)"], interruptible: true,
                                    expectedBytes: Int(end - offset + 1)).body
            reads.add(chunk.count)
            offset = end + 1
            position = 0
        }
        let count = min(buffer.count, chunk.count - position)
        guard count > 0, let destination = buffer.baseAddress else { return 0 }
        chunk.withUnsafeBytes { source in
            guard let origin = source.baseAddress else { return }
            destination.copyMemory(from: origin + position, byteCount: count)
        }
        position += count
        return count
    }

    func close() {
        chunk = Data()
    }
}
