import Foundation

/// How large each part of one multipart upload is.
///
/// S3 takes at most 10,000 parts per object, so a fixed part size caps an object at 10,000 parts
/// (156 GiB of 16 MiB parts), and a stream's size is not known before it ends. The parts of one
/// upload may differ in size (all but the last at least 5 MiB), so the size doubles every
/// `partsPerStep` parts up to `largestPart`: with the defaults (16 MiB, every 1,000 parts, up to
/// 512 MiB) one object holds up to 2.9 TiB, and any object below 15.6 GiB is still sent in 16 MiB parts.
struct S3PartSchedule: Sendable, Equatable {
    /// S3's limit on the parts of one upload.
    static let maximumParts = 10_000
    static let defaultPartsPerStep = 1_000
    /// Parts stop growing here (unless the base part is larger): each is held in memory while it is sent.
    static let largestGrownPart = 512 * 1024 * 1024

    /// The size of the first parts (`DBRECOVERY_S3_PART_SIZE_MB`).
    let base: Int
    /// Parts sent at each size before it doubles.
    let partsPerStep: Int
    /// Parts one upload may have: S3's `maximumParts` (tests lower it to reach the limit).
    let partLimit: Int

    init(base: Int, partsPerStep: Int = defaultPartsPerStep, partLimit: Int = maximumParts) {
        self.base = base
        self.partsPerStep = max(1, partsPerStep)
        self.partLimit = max(1, partLimit)
    }

    var largestPart: Int { max(base, Self.largestGrownPart) }

    /// The size of part `number` (1-based): the base size, doubled once per `partsPerStep` parts before it.
    func size(ofPart number: Int) -> Int {
        var size = base
        var steps = (max(1, number) - 1) / partsPerStep
        while steps > 0 && size < largestPart {
            size = min(largestPart, size * 2)
            steps -= 1
        }
        return size
    }

    /// The largest object one upload holds: `partLimit` full parts.
    var ceiling: UInt64 {
        (1...partLimit).reduce(UInt64(0)) { $0 + UInt64(size(ofPart: $1)) }
    }

    /// The parts an object of `bytes` is sent in, or nil when it is larger than `ceiling`.
    func parts(for bytes: UInt64) -> Int? {
        var sent: UInt64 = 0
        var number = 0
        while sent < bytes || number == 0 {
            number += 1
            if number > partLimit { return nil }
            sent += UInt64(size(ofPart: number))
        }
        return number
    }
}

/// Buffers one part at a time; small objects become one PUT, large ones a multipart upload with
/// parts sent concurrently, aborted on any failure.
///
/// Parts grow by `S3PartSchedule`. Memory stays bounded as they do: at most `concurrency` parts
/// and `inFlightBudget` bytes are in flight (always at least one part), plus the part being filled.
// @unchecked Sendable: `buffer`, `uploadID`, `partNumber`, `finished` belong to the writing thread; part uploads touch only
// `etags`, `failure`, `inFlightParts` and `inFlightBytes`, under `condition`.
final class S3MultipartWriter: ObjectWriter, @unchecked Sendable {
    /// Bytes of parts in flight once parts have grown past `concurrency` × the base size: parallel
    /// transfers of up to 256 MiB parts, one at a time above (then 1 GiB at most: one sent, one filled).
    static let grownInFlightBudget = 256 * 1024 * 1024

    private let store: S3Store
    private let key: String
    private let extraHeaders: [String: String]
    private let schedule: S3PartSchedule
    private let maxInFlightParts: Int
    private let inFlightBudget: Int
    private var buffer = Data()
    private var uploadID: String?
    private var partNumber = 0
    private var etags: [Int: String] = [:]
    private var failure: Error?
    private var inFlightParts = 0
    private var inFlightBytes = 0
    private let condition = NSCondition()
    private var finished = false

    init(store: S3Store, key: String, extraHeaders: [String: String], schedule: S3PartSchedule, grownInFlightBudget: Int = grownInFlightBudget) {
        self.store = store
        self.key = key
        self.extraHeaders = extraHeaders
        self.schedule = schedule
        maxInFlightParts = max(1, store.client.configuration.concurrency)
        inFlightBudget = max(maxInFlightParts * schedule.base, grownInFlightBudget)
        buffer.reserveCapacity(schedule.base)
    }

    deinit {
        // Callers abort explicitly and report; an upload still open here is removed by the next run.
        try? abort()
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        try throwIfFailed()
        var offset = 0
        while offset < bytes.count {
            // Every part number is used and more bytes came: S3 would refuse part 10,001 only after
            // the whole object was sent (and every night again); stop now and say how to fit it.
            guard partNumber < schedule.partLimit else { throw tooLarge() }
            let partSize = schedule.size(ofPart: partNumber + 1)
            let take = min(partSize - buffer.count, bytes.count - offset)
            buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
            offset += take
            if buffer.count == partSize { try sendPart() }
        }
    }

    func commit() throws {
        guard !finished else { return }
        do {
            if uploadID == nil {
                var headers = extraHeaders
                headers["content-type"] = "application/octet-stream"
                _ = try store.client.send("PUT", key: key, headers: headers, body: buffer, interruptible: true)
            } else {
                if !buffer.isEmpty { try sendPart() }
                waitForParts()
                try throwIfFailed()
                let parts = etags.keys.sorted().map { "<Part><PartNumber>\($0)</PartNumber><ETag>\(xmlEscape(etags[$0] ?? ""))</ETag></Part>" }
                let body = Data(("<CompleteMultipartUpload>" + parts.joined() + "</CompleteMultipartUpload>").utf8)
                // (A 200 with an <Error> document inside is that error: S3Client.send throws it, or retries it.)
                _ = try store.client.send("POST", key: key, query: [("uploadId", uploadID ?? "")],
                                          headers: ["content-type": "application/xml"], body: body, interruptible: true)
            }
            finished = true
            buffer = Data()
        } catch {
            do { try abort() } catch let abortError as StorageError {
                // Both matter: why the upload failed, and that it is still open.
                let cause = error as? StorageError
                throw StorageError(cause?.kind ?? .remote, object: store.client.describe(key),
                                   message: "\(cause?.message ?? "\(error)"); \(abortError.message)", hint: abortError.hint)
            }
            throw error
        }
    }

    func abort() throws {
        guard !finished else { return }
        finished = true
        waitForParts()
        buffer = Data()
        guard let uploadID else { return }
        do {
            _ = try store.client.send("DELETE", key: key, query: [("uploadId", uploadID)], acceptable: [404])
        } catch {
            throw StorageError(.remote, object: store.client.describe(key), message: "the multipart upload could not be aborted (\(error))",
                               hint: "the next dbbackup or dbprune on this repository aborts it")
        }
    }

    private func sendPart() throws {
        if uploadID == nil {
            var headers = extraHeaders
            headers["content-type"] = "application/octet-stream"
            let response = try store.client.send("POST", key: key, query: [("uploads", "")], headers: headers, interruptible: true)
            guard let id = XMLNode.parse(response.body)?.first("UploadId")?.text else {
                throw StorageError(.remote, object: store.client.describe(key), message: "CreateMultipartUpload returned no UploadId")
            }
            uploadID = id
        }
        partNumber += 1
        let number = partNumber
        let body = buffer
        let size = body.count
        buffer = Data()
        if partNumber < schedule.partLimit { buffer.reserveCapacity(schedule.size(ofPart: partNumber + 1)) }
        condition.lock()
        while failure == nil && inFlightParts > 0 && (inFlightParts >= maxInFlightParts || inFlightBytes + size > inFlightBudget) {
            condition.wait()
        }
        if let failure {
            condition.unlock()
            throw failure
        }
        inFlightParts += 1
        inFlightBytes += size
        condition.unlock()
        let uploadID = self.uploadID ?? ""
        DispatchQueue.global().async { [self] in
            var etag: String?
            var problem: Error?
            do {
                let response = try store.client.send("PUT", key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)],
                                                     headers: ["content-type": "application/octet-stream"], body: body, interruptible: true)
                // Without its ETag the part cannot be named in the Complete request: fail now, not there.
                guard let tag = response.header("ETag"), !tag.isEmpty else {
                    throw StorageError(.remote, object: store.client.describe(key), message: "UploadPart of part \(number) answered without an ETag",
                                       hint: S3Store.unreadableAnswerHint)
                }
                etag = tag
            } catch {
                problem = error
            }
            condition.lock()
            if let etag { etags[number] = etag } else if failure == nil { failure = problem }
            inFlightParts -= 1
            inFlightBytes -= size
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Returns once no part is in flight.
    private func waitForParts() {
        condition.lock()
        while inFlightParts > 0 { condition.wait() }
        condition.unlock()
    }

    private func throwIfFailed() throws {
        condition.lock()
        let error = failure
        condition.unlock()
        if let error { throw error }
    }

    /// The object outgrew one upload: names the limit and the fix.
    private func tooLarge() -> StorageError {
        let ceiling = schedule.ceiling
        let size = ceiling >= 1 << 40 ? String(format: "%.2f TiB", Double(ceiling) / Double(1 << 40)) : "\(ceiling >> 20) MiB"
        return StorageError(.remote, object: store.client.describe(key),
                            message: "the object is larger than one S3 upload holds: \(schedule.partLimit) parts of "
                                + "\(schedule.base >> 20) MiB growing to \(schedule.largestPart >> 20) MiB, \(size)",
                            hint: "raise DBRECOVERY_S3_PART_SIZE_MB (parts start at that size and double every \(schedule.partsPerStep) parts); "
                                + "nothing of this object is visible")
    }
}
