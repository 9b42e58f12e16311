//! Users, devices, their addresses and their last authentication.

use std::net::IpAddr;

use redb::{ReadableTable, ReadableTableMetadata};

use super::{
    ADDRESSES, AUTHENTICATIONS, AuthRecord, DEVICE_NAMES, DEVICES, DeviceRecord, EnrollmentSource,
    META_NEXT_DEVICE, Store, StoreError, StoreWrite, USERS, UserKey, UserRecord, decode, encode,
    unix_ms_now,
};

/// Fields of a device to enroll; the store assigns its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDevice {
    pub name: String,
    pub owner: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
    pub source: EnrollmentSource,
}

fn address_key(address: &IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

impl Store {
    pub fn device(&self, id: u32) -> Result<Option<DeviceRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(DEVICES)?;
        table
            .get(id)?
            .map(|value| decode("devices", id, value.value()))
            .transpose()
    }

    pub fn device_by_name(&self, name: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let id = {
            let txn = self.begin_read()?;
            let table = txn.open_table(DEVICE_NAMES)?;
            table.get(name)?.map(|id| id.value())
        };
        match id {
            Some(id) => self.device(id),
            None => Ok(None),
        }
    }

    /// Returns the device that owns `address`.
    pub fn device_by_address(&self, address: IpAddr) -> Result<Option<u32>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(ADDRESSES)?;
        Ok(table
            .get(address_key(&address).as_slice())?
            .map(|id| id.value()))
    }

    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(DEVICES)?;
        let mut devices = Vec::with_capacity(table.len()? as usize);
        for entry in table.iter()? {
            let (id, value) = entry?;
            devices.push(decode("devices", id.value(), value.value())?);
        }
        Ok(devices)
    }

    pub fn user(&self, key: &UserKey) -> Result<Option<UserRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(USERS)?;
        table
            .get((key.issuer.as_str(), key.subject.as_str()))?
            .map(|value| decode("users", key, value.value()))
            .transpose()
    }

    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(USERS)?;
        let mut users = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            users.push(decode("users", "", value.value())?);
        }
        Ok(users)
    }

    /// Returns the last successful authentication of every device that has one, by device id.
    pub fn authentications(&self) -> Result<Vec<(u32, AuthRecord)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(AUTHENTICATIONS)?;
        let mut authentications = Vec::new();
        for entry in table.iter()? {
            let (id, value) = entry?;
            let id = id.value();
            authentications.push((id, decode("authentications", id, value.value())?));
        }
        Ok(authentications)
    }

    /// Returns the last successful authentication on device `id`.
    pub fn authentication(&self, id: u32) -> Result<Option<AuthRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(AUTHENTICATIONS)?;
        table
            .get(id)?
            .map(|value| decode("authentications", id, value.value()))
            .transpose()
    }
}

impl StoreWrite {
    /// Enrolls a device and returns its record. Fails when the name or an address is taken.
    pub fn enroll_device(&mut self, device: NewDevice) -> Result<DeviceRecord, StoreError> {
        {
            let names = self.txn.open_table(DEVICE_NAMES)?;
            if names.get(device.name.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "device name {:?} is already enrolled; choose another name or remove that device first",
                    device.name
                )));
            }
        }
        self.check_addresses_free(&device.addresses, None)?;
        let id = self.next_id(META_NEXT_DEVICE, "devices")?;
        let record = DeviceRecord {
            id,
            name: device.name,
            owner: device.owner,
            addresses: device.addresses,
            mac: device.mac,
            source: device.source,
            enrolled_unix_ms: unix_ms_now(),
        };
        self.put_device(&record)?;
        Ok(record)
    }

    /// Replaces an enrolled device's owner, addresses and MAC; its id and name stay.
    pub fn update_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        let old = self
            .device(record.id)?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("device {}", record.id),
            })?;
        self.check_addresses_free(&record.addresses, Some(record.id))?;
        let mut addresses = self.txn.open_table(ADDRESSES)?;
        for address in &old.addresses {
            addresses.remove(address_key(address).as_slice())?;
        }
        drop(addresses);
        self.put_device(record)
    }

    fn check_addresses_free(
        &mut self,
        addresses: &[IpAddr],
        except: Option<u32>,
    ) -> Result<(), StoreError> {
        let table = self.txn.open_table(ADDRESSES)?;
        for address in addresses {
            if let Some(owner) = table.get(address_key(address).as_slice())? {
                let owner = owner.value();
                if Some(owner) != except {
                    return Err(StoreError::Conflict(format!(
                        "address {address} already belongs to device {owner}; remove it there first"
                    )));
                }
            }
        }
        Ok(())
    }

    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        let mut devices = self.txn.open_table(DEVICES)?;
        devices.insert(record.id, encode(record).as_slice())?;
        let mut names = self.txn.open_table(DEVICE_NAMES)?;
        names.insert(record.name.as_str(), record.id)?;
        let mut addresses = self.txn.open_table(ADDRESSES)?;
        for address in &record.addresses {
            addresses.insert(address_key(address).as_slice(), record.id)?;
        }
        Ok(())
    }

    pub fn device(&mut self, id: u32) -> Result<Option<DeviceRecord>, StoreError> {
        let table = self.txn.open_table(DEVICES)?;
        table
            .get(id)?
            .map(|value| decode("devices", id, value.value()))
            .transpose()
    }

    /// Removes a device with its addresses, authentication and sessions; returns the removed
    /// record and the sessions that were removed with it.
    pub fn remove_device(
        &mut self,
        id: u32,
    ) -> Result<(DeviceRecord, Vec<super::SessionRecord>), StoreError> {
        let record = self.device(id)?.ok_or_else(|| StoreError::NotFound {
            what: format!("device {id}"),
        })?;
        self.txn.open_table(DEVICES)?.remove(id)?;
        self.txn
            .open_table(DEVICE_NAMES)?
            .remove(record.name.as_str())?;
        let mut addresses = self.txn.open_table(ADDRESSES)?;
        for address in &record.addresses {
            addresses.remove(address_key(address).as_slice())?;
        }
        drop(addresses);
        self.txn.open_table(AUTHENTICATIONS)?.remove(id)?;
        let sessions = self.remove_device_sessions(id)?;
        Ok((record, sessions))
    }

    /// Inserts or refreshes a user record.
    pub fn put_user(&mut self, user: &UserRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(USERS)?;
        table.insert(
            (user.key.issuer.as_str(), user.key.subject.as_str()),
            encode(user).as_slice(),
        )?;
        Ok(())
    }

    /// Records the last successful authentication on device `id`.
    pub fn put_authentication(&mut self, id: u32, auth: &AuthRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(AUTHENTICATIONS)?;
        table.insert(id, encode(auth).as_slice())?;
        Ok(())
    }
}
