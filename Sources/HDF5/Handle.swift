import CHDF5

/// Owns one HDF5 identifier and closes it with the matching function when released.
/// Public only so that `HDF5Object` can name it; nothing of it is usable outside this module.
public final class ObjectHandle {
    enum Kind { case file, group, dataset, attribute, dataspace, datatype, propertyList }

    let id: hid_t
    let kind: Kind
    let site: Site
    private var isOpen = true

    /// Wraps an id returned by `create`, throwing (with the error stack) if HDF5 returned a failure.
    init(_ kind: Kind, _ operation: @autoclosure () -> String, _ site: Site, _ create: () -> hid_t) throws(HDF5Error) {
        self.id = try h5call(operation(), site, create)
        self.kind = kind
        self.site = site
    }

    var filePath: String { site.file }
    var path: String { site.object ?? "/" }

    /// Closes now, reporting failure; `deinit` closes quietly otherwise.
    func close() throws(HDF5Error) {
        guard isOpen else { return }
        isOpen = false
        try h5call("close", site) { Self.closeFunction(kind)(id) }
    }

    deinit {
        if isOpen { _ = Self.closeFunction(kind)(id) }
    }

    private static func closeFunction(_ kind: Kind) -> (hid_t) -> herr_t {
        switch kind {
        case .file: return H5Fclose
        case .group: return H5Gclose
        case .dataset: return H5Dclose
        case .attribute: return H5Aclose
        case .dataspace: return H5Sclose
        case .datatype: return H5Tclose
        case .propertyList: return H5Pclose
        }
    }
}
